"""Rate limiting shared by all workers: one limiter interface, a Redis and an in-process backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from connector.errors import TransientError


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
    """

    capacity: int
    window_s: float
    name: str = ""
    per_request: bool = False

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.window_s <= 0:
            raise ValueError(f"a limit needs capacity > 0 and window > 0, got {self}")

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
        return max(0, self.limit.capacity - self.used)


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
        if limit.charge(cost) > limit.capacity:
            raise ValueError(f"cost {cost} exceeds the capacity of {limit}")


# The longest any acquire() in this context may sleep, whatever its caller allows.
_wait_cap: ContextVar[float | None] = ContextVar("rate_limit_wait_cap", default=None)


@contextmanager
def waits_at_most(seconds: float) -> Iterator[None]:
    """Inside the block, no acquisition sleeps longer than `seconds` for tokens: it raises
    RateLimited instead (work that can be handed back rather than hold a worker asleep)."""
    token = _wait_cap.set(seconds)
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
        max_wait_s = min(max_wait_s, cap)
    waited = 0.0
    while True:
        wait = limiter.try_acquire(key, cost, limits)
        if wait <= 0:
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


from connector.ratelimit.local import LocalRateLimiter  # noqa: E402
from connector.ratelimit.redis import RedisRateLimiter  # noqa: E402

__all__ = [
    "Limit",
    "LimitUsage",
    "LocalRateLimiter",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "acquire",
    "check_limits",
    "check_request",
    "waits_at_most",
]
