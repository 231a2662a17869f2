"""Rate limiting shared by all workers: one limiter interface, a Redis and an in-process backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from connector.errors import TransientError

# True while interactive work runs (a stage push, a single replay, webhook-driven work): it
# may spend the reserves that bulk work leaves (see connector.pipedrive.client.daily_reserve).
interactive: ContextVar[bool] = ContextVar("interactive", default=False)


@contextmanager
def interactive_work() -> Iterator[None]:
    """Run the block as interactive work (see `interactive`)."""
    token = interactive.set(True)
    try:
        yield
    finally:
        interactive.reset(token)


class RateLimited(TransientError):
    """Rate-limit tokens were not available within the allowed wait; try again later."""

    def __init__(self, key: str, retry_after_s: float) -> None:
        super().__init__(
            f"rate limit for {key!r} exhausted; retry in {retry_after_s:.2f}s", retry_after_s
        )
        self.key = key


@dataclass(frozen=True)
class Limit:
    """At most `capacity` cost units in any rolling `window_s` seconds.

    `name` separates two limits of the same shape that count different things (e.g. the
    search burst limit next to the general burst limit of one Pipedrive token).
    `per_request` limits count requests: each acquisition takes 1 from them, whatever its
    cost (Pipedrive's burst limit counts requests while its daily budget counts token cost,
    and both must be taken in one atomic step).
    `reserve` is the part of the capacity this acquisition must leave unspent (bulk work
    leaves the end of the daily budget to interactive work); it shares the counter of the
    same limit without a reserve.
    """

    capacity: int
    window_s: float
    name: str = ""
    per_request: bool = False
    reserve: int = 0

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.window_s <= 0:
            raise ValueError(f"a limit needs capacity > 0 and window > 0, got {self}")
        if not 0 <= self.reserve < self.capacity:
            raise ValueError(f"a reserve must be >= 0 and below the capacity, got {self}")

    @property
    def available(self) -> int:
        """The capacity an acquisition under this limit may spend: less the reserve."""
        return self.capacity - self.reserve

    @property
    def slot(self) -> str:
        """Stable identity of the counter behind this limit (part of its storage key)."""
        window_ms = round(self.window_s * 1000)
        unit = "req" if self.per_request else "cost"
        return f"{self.name}:{self.capacity}{unit}/{window_ms}ms"

    def charge(self, cost: int) -> int:
        """What one acquisition of `cost` takes from this limit."""
        return 1 if self.per_request else cost


@dataclass(frozen=True)
class LimitUsage:
    """One limit's rolling window under one key as it stands right now.

    `retry_after_s` is how long the smallest acquisition (one request, or cost 1) would
    have to wait for this limit: 0.0 while anything is left.
    """

    limit: Limit
    used: int
    retry_after_s: float = 0.0

    @property
    def remaining(self) -> int:
        """What an acquisition under this limit can still take (its reserve left out)."""
        return max(0, self.limit.available - self.used)


# The usage history: what each key was granted per slot of this many seconds, kept this long.
HISTORY_SLOT_S = 300
HISTORY_S = 86_400


@dataclass(frozen=True)
class UsageSlot:
    """What a key was granted in one slot of the history: cost units (Pipedrive tokens, IFS
    requests) and acquisitions, from `start` (Unix seconds) for HISTORY_SLOT_S seconds."""

    start: int
    cost: int
    requests: int


class RateLimiter(Protocol):
    # True when every process that uses the same backend shares the counters (Redis); an
    # in-process limiter knows only the grants of its own process.
    shared: bool

    def try_acquire(self, key: str, cost: int, limits: Sequence[Limit]) -> float:
        """0.0 if `cost` was taken from ALL limits at once; else seconds to wait (nothing taken)."""
        ...

    def usage(self, key: str, limits: Sequence[Limit]) -> list[LimitUsage]:
        """What is spent of each of `limits` under `key`, in their order; books nothing."""
        ...

    def history(self, key: str) -> list[UsageSlot]:
        """What was granted under `key` per slot over the last HISTORY_S, oldest first (slots
        without a grant left out); each grant is booked there as it is taken."""
        ...

    def align(self, key: str, limit: Limit, used: int) -> None:
        """The remote says `used` of `limit` is spent under `key` right now: count at least
        that much from now on (never less than counted already). A remote's own count
        includes what others spent (other apps, other hosts, a skewed clock)."""
        ...

    def settle(self, key: str, limits: Sequence[Limit]) -> None:
        """The request this thread was granted last under `key` has been answered: one unit of
        each of `limits` (per-request limits) counts a full window from now instead of from
        its grant. A remote counts a request from its arrival, somewhere between the two, so
        two requests granted a window apart can never land in one of the remote's windows,
        however long either took to get there."""
        ...

    def pause(self, key: str, seconds: float) -> None:
        """Grant nothing under `key` for `seconds` (at least; a longer pause stays)."""
        ...

    def paused_for(self, key: str) -> float:
        """Seconds left of the pause of `key`; 0.0 when it is not paused."""
        ...


def check_limits(limits: Sequence[Limit]) -> None:
    """Refuse a list that names one counter twice (its cost would be booked twice)."""
    slots = [limit.slot for limit in limits]
    if len(set(slots)) != len(slots):
        raise ValueError(f"the same limit is listed twice: {limits}")


def check_request(cost: int, limits: Sequence[Limit]) -> None:
    """Refuse requests that no amount of waiting could grant."""
    if cost <= 0:
        raise ValueError(f"cost must be positive, got {cost}")
    check_limits(limits)
    for limit in limits:
        if limit.charge(cost) > limit.available:
            raise ValueError(f"cost {cost} exceeds the capacity of {limit}")


@dataclass
class _WaitCap:
    """The longest an acquisition in a `waits_at_most` block may sleep: `first_s` until the
    block's first grant, `started_s` after it."""

    first_s: float
    started_s: float
    granted: bool = False

    @property
    def seconds(self) -> float:
        return self.started_s if self.granted else self.first_s


# The cap of the enclosing `waits_at_most` block, if any.
_wait_cap: ContextVar[_WaitCap | None] = ContextVar("rate_limit_wait_cap", default=None)


@contextmanager
def waits_at_most(seconds: float, *, once_started_s: float | None = None) -> Iterator[None]:
    """Inside the block, no acquisition sleeps longer than `seconds` for tokens: it raises
    RateLimited instead (work that can be handed back rather than hold a worker asleep).

    `once_started_s`: the cap after the block's first grant. Work that has spent some of its
    tokens (an order that created its customer and now creates its deal) would, handed
    back, spend them again on its next attempt; it waits for tokens due that soon instead.
    """
    started = seconds if once_started_s is None else max(seconds, once_started_s)
    token = _wait_cap.set(_WaitCap(seconds, started))
    try:
        yield
    finally:
        _wait_cap.reset(token)


def acquire(
    limiter: RateLimiter,
    key: str,
    cost: int,
    limits: Sequence[Limit],
    *,
    max_wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Take `cost` from every limit, sleeping up to `max_wait_s` in total; return seconds waited.

    Raises RateLimited (with the wait still needed) when the tokens would come later than that
    (or than the cap of an enclosing `waits_at_most`).
    """
    cap = _wait_cap.get()
    if cap is not None:
        max_wait_s = min(max_wait_s, cap.seconds)
    waited = 0.0
    while True:
        wait = limiter.try_acquire(key, cost, limits)
        if wait <= 0:
            if cap is not None:
                cap.granted = True
            if waited:
                _observe_wait(key, waited)
            return waited
        if waited + wait > max_wait_s:
            raise RateLimited(key, wait)
        sleep(wait)
        waited += wait


def _observe_wait(key: str, seconds: float) -> None:
    # Keys are "<system>:<tenant>"; the metric is labelled by system only (bounded labels).
    from connector.metrics import observe_limiter_wait

    observe_limiter_wait(key.split(":", 1)[0], seconds)


class ThreadGrants:
    """Each thread's newest grant time per key, in its limiter's own clock: `settle` moves
    that grant once its request was answered. Per thread, because a limiter is shared by a
    process's threads and each settles only the grant it took."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _by_key(self) -> dict[str, float]:
        grants: dict[str, float] | None = getattr(self._local, "by_key", None)
        if grants is None:
            grants = self._local.by_key = {}
        return grants

    def note(self, key: str, at: float) -> None:
        self._by_key()[key] = at

    def take(self, key: str) -> float | None:
        """The thread's newest grant of `key`, forgotten: a grant is settled at most once."""
        return self._by_key().pop(key, None)


from connector.ratelimit.local import LocalRateLimiter  # noqa: E402
from connector.ratelimit.redis import RedisRateLimiter  # noqa: E402

__all__ = [
    "HISTORY_S",
    "HISTORY_SLOT_S",
    "Limit",
    "LimitUsage",
    "LocalRateLimiter",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "UsageSlot",
    "acquire",
    "check_limits",
    "check_request",
    "interactive",
    "interactive_work",
    "waits_at_most",
]
