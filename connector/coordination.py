"""What workers share: rate limiters and per-record locks, in Redis or in-process."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from connector.errors import TransientError
from connector.ratelimit import (
    Limit,
    LimitUsage,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    acquire,
)

if TYPE_CHECKING:
    import redis as redis_lib

    from connector.http import Acquire

log = logging.getLogger(__name__)


class LockTimeout(TransientError):
    """Another worker held a record lock for longer than we were willing to wait."""

    def __init__(self, name: str, wait_s: float) -> None:
        super().__init__(f"lock {name!r} not acquired within {wait_s:.1f}s")
        self.name = name


class _LocalLocks:
    """Named locks for the threads of one process; names are forgotten once released."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._changed = threading.Condition()

    def acquire(self, name: str, wait_s: float) -> bool:
        with self._changed:
            if not self._changed.wait_for(lambda: name not in self._held, timeout=wait_s):
                return False
            self._held.add(name)
            return True

    def release(self, name: str) -> None:
        with self._changed:
            self._held.discard(name)
            self._changed.notify_all()


class Coordination:
    """Rate limiters and record locks shared by every worker of a deployment.

    With Redis they are shared across processes and hosts; without, within one process
    (the embedded demo runs everything in one process).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        redis: redis_lib.Redis | None = None,
        prefix: str = "mlc:",
    ) -> None:
        self.limiter = limiter
        self.redis = redis
        self.prefix = prefix
        self._local_locks = _LocalLocks()

    @classmethod
    def from_url(cls, redis_url: str | None, *, prefix: str = "mlc:") -> Coordination:
        """Redis-backed when `redis_url` is given, else in-process."""
        if redis_url is None:
            return cls(LocalRateLimiter(), prefix=prefix)
        import redis as redis_lib

        client = redis_lib.Redis.from_url(redis_url)
        return cls(RedisRateLimiter(client, prefix=f"{prefix}rl:"), redis=client, prefix=prefix)

    @contextmanager
    def lock(self, name: str, *, ttl_s: float = 60.0, wait_s: float = 30.0) -> Iterator[None]:
        """Hold the lock `name` for the block; LockTimeout if not acquired within `wait_s`.

        In Redis the lock expires after `ttl_s` so that a crashed worker cannot hold a
        record forever; work under the lock must finish well within that.
        """
        if self.redis is None:
            if not self._local_locks.acquire(name, wait_s):
                raise LockTimeout(name, wait_s)
            try:
                yield
            finally:
                self._local_locks.release(name)
            return

        from redis.exceptions import LockError

        redis_lock = self.redis.lock(
            f"{self.prefix}lock:{name}", timeout=ttl_s, blocking_timeout=wait_s, sleep=0.05
        )
        if not redis_lock.acquire():
            raise LockTimeout(name, wait_s)
        try:
            yield
        finally:
            try:
                redis_lock.release()
            except LockError:
                # The TTL ran out under us: another worker may have taken the record since.
                log.warning("lock %r expired before release (held longer than %.0fs)", name, ttl_s)

    def acquirer(
        self,
        key: str,
        limits_for: Callable[[str], Sequence[Limit]],
        *,
        max_wait_s: float = 5.0,
    ) -> Acquire:
        """An `Acquire` for RemoteSession: the bucket picks the limits, `key` the counters."""

        def take(bucket: str, cost: int) -> None:
            acquire(self.limiter, key, cost, limits_for(bucket), max_wait_s=max_wait_s)

        return take

    def lease(self, name: str, *, ttl_s: float) -> Lease:
        """A lease on `name` that one holder at a time keeps by renewing it within `ttl_s`
        (the dispatcher's: one per deployment, taken over when its holder dies)."""
        return Lease(self, name, ttl_s)

    def usage(self, key: str, limits: Sequence[Limit]) -> list[LimitUsage]:
        """How much of each limit under `key` is spent right now, as the limiter counts it.

        Books nothing. The in-process limiter answers for its own process only
        (`limiter.shared` says which).
        """
        return self.limiter.usage(key, limits)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


# Take the lease when it is free, renew it when this holder has it: one atomic step.
_HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """Held by one process of a deployment at a time; lost `ttl_s` after its last renewal.

    In-process (no Redis) there is one process: it always holds it.
    """

    def __init__(self, coordination: Coordination, name: str, ttl_s: float) -> None:
        self.key = f"{coordination.prefix}lease:{name}"
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.token = uuid.uuid4().hex
        self._redis = coordination.redis

    def hold(self) -> bool:
        """Take or renew the lease; True while this holder has it."""
        if self._redis is None:
            return True
        return bool(self._redis.eval(_HOLD_LEASE, 1, self.key, self.token, self.ttl_ms))

    def drop(self) -> None:
        """Give the lease up now (if held), so that another holder need not wait for it."""
        if self._redis is not None:
            self._redis.eval(_DROP_LEASE, 1, self.key, self.token)
