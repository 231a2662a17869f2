"""Redis rate limiter shared by every worker process: one atomic Lua script per request."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import redis as redis_lib

# Bucket a window into this many slices: grants count for at most window/SLICES too long.
SLICES = 1000
_SCRIPT = resources.files("connector.ratelimit").joinpath("sliding_window.lua").read_text("utf-8")


class RedisRateLimiter:
    """Cost-weighted rolling-window limits kept in Redis; all limits are taken together or not."""

    shared = True

    def __init__(self, client: redis_lib.Redis, prefix: str = "mlc:rl:") -> None:
        self.client = client
        self.prefix = prefix
        self._script: Any = client.register_script(_SCRIPT)
        # key -> Redis time (µs) of this thread's newest grant under it, for settle().
        self._grants = ThreadGrants()

    def _keys_for(self, key: str, limit: Limit) -> tuple[str, str]:
        # The hash tag keeps every counter of one key in one cluster slot, as Lua requires.
        base = f"{self.prefix}{{{key}}}:{limit.slot}"
        return f"{base}:z", f"{base}:h"

    def _history_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:history"

    def _pause_key(self, key: str) -> str:
        return f"{self.prefix}{{{key}}}:pause"

    def _run(
        self, mode: str, key: str, cost: int, limits: Sequence[Limit], charge: int | None = None
    ) -> Any:
        keys: list[str] = []
        args: list[str | int] = [mode]
        for limit in limits:
            keys.extend(self._keys_for(key, limit))
            window_us = round(limit.window_s * 1_000_000)
            args.extend(
                [
                    limit.available,
                    window_us,
                    max(1000, window_us // SLICES),
                    limit.charge(cost) if charge is None else charge,
                ]
            )
        # Then the history hash (its slot and span in seconds, and the acquisition's cost, which
        # only a granted "acquire" books there) and last the pause, as the script expects.
        keys.extend([self._history_key(key), self._pause_key(key)])
        args.extend([HISTORY_SLOT_S, HISTORY_S, cost])
        return self._script(keys=keys, args=args)

    def try_acquire(self, key: str, cost: int, limits: Sequence[Limit]) -> float:
        check_request(cost, limits)
        answer = int(self._run("acquire", key, cost, limits))
        if answer <= 0:
            self._grants.note(key, -answer)
            return 0.0
        return answer / 1_000_000

    def settle(self, key: str, limits: Sequence[Limit]) -> None:
        granted = self._grants.take(key)
        if granted is not None and limits:
            # The grant time noted is the script's integer microseconds.
            self._run("settle", key, 1, limits, charge=int(granted))

    def usage(self, key: str, limits: Sequence[Limit]) -> list[LimitUsage]:
        check_limits(limits)
        answer = self._run("usage", key, 1, limits)
        return [
            LimitUsage(limit, int(answer[2 * i]), int(answer[2 * i + 1]) / 1_000_000)
            for i, limit in enumerate(limits)
        ]

    def history(self, key: str) -> list[UsageSlot]:
        # Fields "<slot start>:c" (cost) and "<slot start>:n" (requests); Redis' clock, as
        # the script books them.
        fields = self.client.hgetall(self._history_key(key))
        now_s, _ = self.client.time()
        found: dict[int, list[int]] = {}
        for name, value in fields.items():
            text = name.decode() if isinstance(name, bytes) else str(name)
            start, kind = text.split(":")
            found.setdefault(int(start), [0, 0])[0 if kind == "c" else 1] = int(value)
        return [
            UsageSlot(start, cost, requests)
            for start, (cost, requests) in sorted(found.items())
            if start + HISTORY_SLOT_S > int(now_s) - HISTORY_S
        ]

    def align(self, key: str, limit: Limit, used: int) -> None:
        if used > 0:
            self._run("align", key, 1, [limit], charge=used)

    def pause(self, key: str, seconds: float) -> None:
        self._script(keys=[self._pause_key(key)], args=["pause", max(1, round(seconds * 1000))])

    def paused_for(self, key: str) -> float:
        left_ms = int(self.client.pttl(self._pause_key(key)))
        return left_ms / 1000 if left_ms > 0 else 0.0
