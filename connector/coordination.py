"""What workers share: rate limiters, per-record locks and each process's last configuration
check, in Redis or in-process."""

from __future__ import annotations

import logging
import threading
import time
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
    UsageSlot,
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
        self._local_checks: dict[str, dict[str, tuple[float, str]]] = {}

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

    def usage(self, key: str, limits: Sequence[Limit]) -> list[LimitUsage]:
        """How much of each limit under `key` is spent right now, as the limiter counts it.

        Books nothing. The in-process limiter answers for its own process only
        (`limiter.shared` says which).
        """
        return self.limiter.usage(key, limits)

    def history(self, key: str) -> list[UsageSlot]:
        """What the limiter granted under `key` per slot over the last day, oldest first."""
        return self.limiter.history(key)

    def publish_config_check(self, scope: str, process: str, report: str, ttl_s: float) -> None:
        """Store one process's last configuration check (`report`, JSON) under `scope` (the
        deployment); it counts as current for `ttl_s` seconds unless published again."""
        expires = time.time() + ttl_s
        if self.redis is None:
            self._local_checks.setdefault(scope, {})[process] = (expires, report)
            return
        key = f"{self.prefix}config-checks:{scope}"
        # One hash per deployment: readers get every process's report with one command,
        # never a scan of the keyspace. Fields carry their own expiry; the hash expires
        # with its newest report, so a stopped deployment leaves nothing behind.
        with self.redis.pipeline() as pipe:
            pipe.hset(key, process, f"{expires:.3f} {report}")
            pipe.expire(key, max(1, int(ttl_s) + 1))
            pipe.execute()

    def config_checks(self, scope: str) -> list[str]:
        """The current reports of every process of `scope` (expired ones are dropped)."""
        now = time.time()
        if self.redis is None:
            held = self._local_checks.get(scope, {})
            return [report for expires, report in held.values() if expires > now]
        key = f"{self.prefix}config-checks:{scope}"
        current, expired = [], []
        for process, value in self.redis.hgetall(key).items():
            text = value.decode() if isinstance(value, bytes) else str(value)
            expires, _, report = text.partition(" ")
            if float(expires) > now:
                current.append(report)
            else:
                expired.append(process)
        if expired:
            self.redis.hdel(key, *expired)
        return current

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
