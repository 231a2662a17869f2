"""In-process rate limiter for the embedded setup: exact rolling logs under one lock."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from connector.ratelimit import (
    HISTORY_S,
    HISTORY_SLOT_S,
    Limit,
    LimitUsage,
    ThreadGrants,
    UsageSlot,
    check_limits,
    check_request,
)


class _Log:
    """Grants of one limit, oldest first, with their running total."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, now: float, window_s: float) -> None:
        while self.entries and self.entries[0][0] + window_s <= now:
            self.total -= self.entries.popleft()[1]

    def wait_for(self, excess: int, now: float, window_s: float) -> float:
        freed = 0
        for stamp, cost in self.entries:
            freed += cost
            if freed >= excess:
                return stamp + window_s - now
        return window_s


class LocalRateLimiter:
    """Same semantics as RedisRateLimiter, shared by the threads of one process only."""

    shared = False

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock  # the history's slots are times of day
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str], _Log] = {}
        self._history: dict[str, dict[int, list[int]]] = {}  # key -> slot -> [cost, requests]
        self._paused_until: dict[str, float] = {}
        self._grants = ThreadGrants()

    def try_acquire(self, key: str, cost: int, limits: Sequence[Limit]) -> float:
        check_request(cost, limits)
        with self._lock:
            now = self._clock()
            logs = []
            wait = max(0.0, self._paused_until.get(key, 0.0) - now)
            for limit in limits:
                log = self._logs.setdefault((key, limit.slot), _Log())
                log.expire(now, limit.window_s)
                excess = log.total + limit.charge(cost) - limit.available
                if excess > 0:
                    wait = max(wait, log.wait_for(excess, now, limit.window_s))
                logs.append((log, limit.charge(cost)))
            if wait > 0:
                return max(wait, 1e-6)
            for log, charge in logs:
                log.entries.append((now, charge))
                log.total += charge
            self._book(key, cost)
            self._grants.note(key, now)
            return 0.0

    def _book(self, key: str, cost: int) -> None:
        wall = self._wall_clock()
        slots = self._history.setdefault(key, {})
        start = int(wall // HISTORY_SLOT_S) * HISTORY_SLOT_S
        if start not in slots:  # a new slot: forget those out of the history
            for old in [slot for slot in slots if slot < wall - HISTORY_S - HISTORY_SLOT_S]:
                del slots[old]
            slots[start] = [0, 0]
        slots[start][0] += cost
        slots[start][1] += 1

    def history(self, key: str) -> list[UsageSlot]:
        with self._lock:
            since = self._wall_clock() - HISTORY_S
            return [
                UsageSlot(start, cost, requests)
                for start, (cost, requests) in sorted(self._history.get(key, {}).items())
                if start + HISTORY_SLOT_S > since
            ]

    def settle(self, key: str, limits: Sequence[Limit]) -> None:
        granted = self._grants.take(key)
        if granted is None:
            return
        with self._lock:
            now = self._clock()
            for limit in limits:
                log = self._logs.get((key, limit.slot))
                if log is None:
                    continue
                with contextlib.suppress(ValueError):  # gone: it left the window already
                    log.entries.remove((granted, 1))
                    log.total -= 1
                log.entries.append((now, 1))
                log.total += 1

    def usage(self, key: str, limits: Sequence[Limit]) -> list[LimitUsage]:
        check_limits(limits)
        found = []
        with self._lock:
            now = self._clock()
            for limit in limits:
                log = self._logs.get((key, limit.slot))
                if log is None:
                    found.append(LimitUsage(limit, 0))
                    continue
                # Dropping grants that left the window changes no answer; nothing is booked.
                log.expire(now, limit.window_s)
                excess = log.total + 1 - limit.available
                wait = max(log.wait_for(excess, now, limit.window_s), 1e-6) if excess > 0 else 0.0
                found.append(LimitUsage(limit, log.total, wait))
        return found

    def align(self, key: str, limit: Limit, used: int) -> None:
        with self._lock:
            now = self._clock()
            log = self._logs.setdefault((key, limit.slot), _Log())
            log.expire(now, limit.window_s)
            missing = used - log.total
            if missing > 0:
                log.entries.append((now, missing))
                log.total += missing

    def pause(self, key: str, seconds: float) -> None:
        with self._lock:
            until = self._clock() + seconds
            self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)

    def paused_for(self, key: str) -> float:
        with self._lock:
            return max(0.0, self._paused_until.get(key, 0.0) - self._clock())
