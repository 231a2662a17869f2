"""What workers share: rate limiters, per-record locks and each process's last configuration
check, in Redis or in-process."""

from __future__ import annotations

import logging
import threading
import time
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
    UsageSlot,
    acquire,
)

if TYPE_CHECKING:
    import redis as redis_lib
    from redis.lock import Lock as Redis_Lock

    from connector.http import Acquire

log = logging.getLogger(__name__)

# A Redis record lock lives this long unless its holder renews it (a third of it before it
# runs out, from a thread of the holder's process): a worker killed with SIGKILL holds its
# records for seconds, not for the whole `ttl_s` (measured: a killed worker's records
# waited the full 60 s TTL before the redelivered tasks could take them).
LOCK_LEASE_S = 10.0


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


class _LeaseRenewer:
    """Renews the Redis locks this process holds, each until its `ttl_s` is reached."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._held: dict[int, tuple[Redis_Lock, float]] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lock: Redis_Lock, until: float) -> None:
        with self._guard:
            self._held[id(lock)] = (lock, until)
            # Started by the process that holds locks (after a prefork worker forked).
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lock-leases", daemon=True)
                self._thread.start()

    def drop(self, lock: Redis_Lock) -> None:
        with self._guard:
            self._held.pop(id(lock), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.lease_s / 3)
            with self._guard:
                held = list(self._held.values())
            now = time.monotonic()
            for lock, until in held:
                if now >= until:
                    self.drop(lock)  # held for its whole ttl_s: let it run out
                    continue
                try:
                    lock.extend(min(self.lease_s, until - now), replace_ttl=True)
                except Exception as error:  # lost meanwhile, or Redis unreachable
                    log.warning("lock lease not renewed: %s", error)
                    self.drop(lock)


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
        lock_lease_s: float = LOCK_LEASE_S,
    ) -> None:
        self.limiter = limiter
        self.redis = redis
        self.prefix = prefix
        self._local_locks = _LocalLocks()
        self._local_checks: dict[str, dict[str, tuple[float, str]]] = {}
        self._leases = _LeaseRenewer(lock_lease_s)

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

        In Redis the lock is a lease of LOCK_LEASE_S that the holder renews while the block
        runs, at most until `ttl_s`: a crashed worker's lock runs out within the lease, a
        hung one's after `ttl_s`; work under the lock must finish well within `ttl_s`.
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
            f"{self.prefix}lock:{name}",
            timeout=min(ttl_s, self._leases.lease_s),
            blocking_timeout=wait_s,
            sleep=0.05,
            thread_local=False,  # the renewing thread extends it with the holder's token
        )
        if not redis_lock.acquire():
            raise LockTimeout(name, wait_s)
        self._leases.hold(redis_lock, time.monotonic() + ttl_s)
        try:
            yield
        finally:
            self._leases.drop(redis_lock)
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
