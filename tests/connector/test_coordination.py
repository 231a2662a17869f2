"""Coordination: record locks and limiter acquirers, in Redis and in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from connector.coordination import Coordination, LockTimeout
from connector.ratelimit import Limit, LocalRateLimiter, RateLimited, RedisRateLimiter


@pytest.fixture(params=["redis", "local"])
def coordination(request: pytest.FixtureRequest) -> Iterator[Coordination]:
    if request.param == "local":
        yield Coordination.from_url(None)
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    coordination = Coordination.from_url(url, prefix=prefix)
    yield coordination
    coordination.close()


def test_from_url_picks_the_backend(redis_url: str, redis_prefix: str):
    local = Coordination.from_url(None)
    assert isinstance(local.limiter, LocalRateLimiter) and local.redis is None
    shared = Coordination.from_url(redis_url, prefix=redis_prefix)
    assert isinstance(shared.limiter, RedisRateLimiter) and shared.redis is not None
    assert shared.redis.ping()
    shared.close()


def test_lock_excludes_other_holders(coordination: Coordination):
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most_inside
        for _ in range(5):
            with coordination.lock("order:1", wait_s=10):
                with guard:
                    inside += 1
                    most_inside = max(most_inside, inside)
                time.sleep(0.005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_inside == 1


def test_lock_times_out(coordination: Coordination):
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with coordination.lock("customer:C1"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeout), coordination.lock("customer:C1", wait_s=0.1):
            pass
        # another name is not blocked
        with coordination.lock("customer:C2", wait_s=0.1):
            pass
    finally:
        release.set()
        thread.join()
    with coordination.lock("customer:C1", wait_s=1):
        pass


def test_lock_is_released_when_the_block_raises(coordination: Coordination):
    with pytest.raises(RuntimeError), coordination.lock("order:9"):
        raise RuntimeError("boom")
    with coordination.lock("order:9", wait_s=0.1):
        pass


def test_redis_lock_expires_after_ttl(redis_url: str, redis_prefix: str):
    # a crashed holder (never releases) must not block the record forever
    crashed = Coordination.from_url(redis_url, prefix=redis_prefix)
    assert crashed.redis is not None
    crashed.redis.lock(f"{redis_prefix}lock:order:7", timeout=0.3).acquire()
    other = Coordination.from_url(redis_url, prefix=redis_prefix)
    with other.lock("order:7", wait_s=5):
        pass


def test_acquirer_maps_buckets_to_limits(coordination: Coordination):
    limits = {"default": [Limit(3, 60)], "search": [Limit(3, 60), Limit(1, 60, name="search")]}
    take = coordination.acquirer("pipedrive:t1", lambda bucket: limits[bucket], max_wait_s=0.05)
    take("search", 1)
    with pytest.raises(RateLimited) as raised:
        take("search", 1)
    assert raised.value.retry_after_s > 50
    take("default", 1)
    take("default", 1)
    with pytest.raises(RateLimited):
        take("default", 1)


def test_a_redis_lock_is_a_lease_renewed_while_held_so_a_dead_holders_runs_out_soon(
    redis_url: str, redis_prefix: str
):
    holder = Coordination.from_url(redis_url, prefix=redis_prefix)
    holder._leases.lease_s = 0.6  # a short lease, renewed every 0.2 s
    other = Coordination.from_url(redis_url, prefix=redis_prefix)
    assert holder.redis is not None
    with holder.lock("order:11", ttl_s=30):
        # What a holder killed now would leave behind: the lease, not the 30 s.
        assert 0 < holder.redis.pttl(f"{redis_prefix}lock:order:11") <= 600
        time.sleep(1.5)  # well past the lease: renewed meanwhile
        with pytest.raises(LockTimeout), other.lock("order:11", wait_s=0.3):
            pass
    with other.lock("order:11", wait_s=0.1):
        pass
    holder.close()
    other.close()
