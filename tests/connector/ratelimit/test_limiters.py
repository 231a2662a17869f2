"""Both limiter backends: rolling windows, cost weighting, atomic multi-limit grants, waits."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest
import redis

from connector.ratelimit import (
    HISTORY_S,
    HISTORY_SLOT_S,
    Limit,
    LimitUsage,
    LocalRateLimiter,
    RateLimited,
    RateLimiter,
    RedisRateLimiter,
    acquire,
    waits_at_most,
)

# Grant times are taken by the clients, a little after the limiter decided; windows this much
# shorter than the limit's absorb that latency without hiding a real over-grant.
SLACK_S = 0.1


@pytest.fixture(params=["redis", "local"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    if request.param == "local":
        return LocalRateLimiter()
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=prefix)


def most_in_any_window(stamps: list[float], window_s: float) -> int:
    stamps = sorted(stamps)
    most = 0
    for i, start in enumerate(stamps):
        inside = sum(1 for t in stamps[i:] if t < start + window_s)
        most = max(most, inside)
    return most


def test_grants_up_to_capacity_then_asks_to_wait(limiter: RateLimiter):
    limits = [Limit(3, 60)]
    assert [limiter.try_acquire("t1", 1, limits) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire("t1", 1, limits)
    assert 0 < wait <= 60.1


def test_keys_are_independent(limiter: RateLimiter):
    limits = [Limit(1, 60)]
    assert limiter.try_acquire("ifs:a", 1, limits) == 0
    assert limiter.try_acquire("ifs:b", 1, limits) == 0
    assert limiter.try_acquire("ifs:a", 1, limits) > 0


def test_cost_weighting(limiter: RateLimiter):
    limits = [Limit(10, 60)]
    assert limiter.try_acquire("t", 4, limits) == 0
    assert limiter.try_acquire("t", 4, limits) == 0
    assert limiter.try_acquire("t", 4, limits) > 0  # 12 > 10
    assert limiter.try_acquire("t", 2, limits) == 0  # exactly 10
    assert limiter.try_acquire("t", 1, limits) > 0


def test_all_limits_or_none(limiter: RateLimiter):
    budget, burst = Limit(10, 60), Limit(3, 60, name="search")
    for _ in range(3):
        assert limiter.try_acquire("t", 1, [budget, burst]) == 0
    assert limiter.try_acquire("t", 1, [budget, burst]) > 0
    # the refused request took nothing from the budget: 7 units are still there
    for _ in range(7):
        assert limiter.try_acquire("t", 1, [budget]) == 0
    assert limiter.try_acquire("t", 1, [budget]) > 0


def test_per_request_limits_count_requests_while_cost_limits_count_cost(limiter: RateLimiter):
    # Pipedrive: the burst counts requests, the daily budget counts token cost, one step.
    burst, day = Limit(3, 60, "burst", per_request=True), Limit(12, 60, "daily")
    assert limiter.try_acquire("pd", 5, [burst, day]) == 0  # burst 1/3, day 5/12
    assert limiter.try_acquire("pd", 5, [burst, day]) == 0  # burst 2/3, day 10/12
    assert limiter.try_acquire("pd", 5, [burst, day]) > 0  # the day would reach 15
    # Nothing was taken by the refusal: one request (burst 3/3) of cost 2 (day 12/12) fits.
    assert limiter.try_acquire("pd", 2, [burst, day]) == 0
    assert limiter.try_acquire("pd", 1, [burst]) > 0
    assert limiter.try_acquire("pd", 1, [day]) > 0


def test_same_shape_limits_with_different_names_count_separately(limiter: RateLimiter):
    general, search = Limit(2, 60), Limit(2, 60, name="search")
    assert limiter.try_acquire("t", 2, [general]) == 0
    assert limiter.try_acquire("t", 2, [search]) == 0
    assert limiter.try_acquire("t", 1, [general]) > 0
    assert limiter.try_acquire("t", 1, [search]) > 0


def test_wait_is_until_the_oldest_grant_leaves_the_window(limiter: RateLimiter):
    limits = [Limit(2, 1.0)]
    assert limiter.try_acquire("t", 1, limits) == 0
    assert limiter.try_acquire("t", 1, limits) == 0
    wait = limiter.try_acquire("t", 1, limits)
    assert 0.5 < wait <= 1.01
    time.sleep(wait)
    assert limiter.try_acquire("t", 1, limits) == 0


def test_wait_counts_the_cost_that_must_leave(limiter: RateLimiter):
    short, long = Limit(5, 1.0), Limit(20, 30.0)
    assert limiter.try_acquire("t", 5, [short, long]) == 0
    wait = limiter.try_acquire("t", 5, [short, long])
    assert 0.5 < wait <= 1.01  # the short window frees first; the long one has room
    assert limiter.try_acquire("t", 16, [long]) > 1.01  # 21 > 20 needs the long window to turn


def test_impossible_requests_are_refused(limiter: RateLimiter):
    with pytest.raises(ValueError):
        limiter.try_acquire("t", 11, [Limit(10, 60)])
    with pytest.raises(ValueError):
        limiter.try_acquire("t", 0, [Limit(10, 60)])
    with pytest.raises(ValueError):
        limiter.try_acquire("t", 1, [Limit(10, 60), Limit(10, 60)])


def test_acquire_waits_for_tokens(limiter: RateLimiter):
    limits = [Limit(1, 0.3)]
    assert acquire(limiter, "t", 1, limits, max_wait_s=5) == 0
    waited = acquire(limiter, "t", 1, limits, max_wait_s=5)
    assert 0 < waited <= 0.31


def test_acquire_raises_rate_limited_when_the_wait_is_too_long(limiter: RateLimiter):
    limits = [Limit(1, 60)]
    acquire(limiter, "t", 1, limits, max_wait_s=1)
    with pytest.raises(RateLimited) as raised:
        acquire(limiter, "t", 1, limits, max_wait_s=1)
    assert 58 < raised.value.retry_after_s <= 60.1


def test_work_that_was_granted_tokens_waits_longer_for_the_rest(limiter: RateLimiter):
    window = [Limit(1, 0.8)]
    assert acquire(limiter, "deal", 1, window, max_wait_s=5) == 0
    # Nothing granted in the block yet: 0.8 s is longer than its 0.5 s, it is handed back.
    with waits_at_most(0.5, once_started_s=2.0), pytest.raises(RateLimited):
        acquire(limiter, "deal", 1, window, max_wait_s=5)
    # Granted some (its customer created): it waits for the rest, due within 2 s ...
    with waits_at_most(0.5, once_started_s=2.0):
        assert acquire(limiter, "customer", 1, window, max_wait_s=5) == 0
        assert acquire(limiter, "deal", 1, window, max_wait_s=5) > 0.5
        # ... but never for tokens due later than that.
        acquire(limiter, "day", 1, [Limit(1, 60)], max_wait_s=5)
        with pytest.raises(RateLimited):
            acquire(limiter, "day", 1, [Limit(1, 60)], max_wait_s=5)


def test_redis_counters_expire_when_idle(redis_url: str, redis_prefix: str):
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, prefix=redis_prefix)
    limiter.try_acquire("t", 1, [Limit(5, 2.0)])
    # The usage history (a day, tested below) is not a counter of the limit.
    keys = [key for key in client.scan_iter(match=redis_prefix + "*") if b"history" not in key]
    assert len(keys) == 2
    assert all(0 < client.pttl(key) <= 3100 for key in keys)


def test_usage_of_an_unknown_key_is_all_remaining(limiter: RateLimiter):
    limits = [Limit(3, 60), Limit(10, 60, "daily")]
    assert limiter.usage("never-used", limits) == [LimitUsage(limit, 0, 0.0) for limit in limits]


def test_usage_reports_the_spent_cost_of_each_limit_and_books_nothing(limiter: RateLimiter):
    burst, day = Limit(3, 60, "burst", per_request=True), Limit(12, 60, "daily")
    assert limiter.try_acquire("pd", 5, [burst, day]) == 0
    assert limiter.try_acquire("pd", 4, [burst, day]) == 0

    for _ in range(3):  # asking again and again takes nothing
        found = limiter.usage("pd", [burst, day])
        assert [(usage.limit, usage.used, usage.remaining) for usage in found] == [
            (burst, 2, 1),
            (day, 9, 3),
        ]
        assert [usage.retry_after_s for usage in found] == [0.0, 0.0]
    # Exactly what usage said is left can still be taken.
    assert limiter.try_acquire("pd", 3, [burst, day]) == 0
    assert limiter.try_acquire("pd", 1, [day]) > 0


def test_usage_of_a_full_limit_says_when_one_more_fits(limiter: RateLimiter):
    full, roomy = Limit(2, 1.0), Limit(10, 30.0, "day")
    assert limiter.try_acquire("t", 1, [full, roomy]) == 0
    assert limiter.try_acquire("t", 1, [full, roomy]) == 0

    short, long = limiter.usage("t", [full, roomy])

    assert (short.used, short.remaining) == (2, 0) and 0.5 < short.retry_after_s <= 1.01
    assert (long.used, long.remaining, long.retry_after_s) == (2, 8, 0.0)
    time.sleep(short.retry_after_s)
    # The oldest grant has left the window; the second may be booked a bucket later (two
    # calls need not land in one millisecond), so it may still count.
    assert limiter.usage("t", [full])[0].used <= 1
    assert limiter.try_acquire("t", 1, [full]) == 0


def test_usage_counts_keys_and_limits_separately(limiter: RateLimiter):
    general, search = Limit(5, 60), Limit(5, 60, "search")
    limiter.try_acquire("ifs:a", 2, [general])
    limiter.try_acquire("ifs:b", 1, [search])
    assert [usage.used for usage in limiter.usage("ifs:a", [general, search])] == [2, 0]
    assert [usage.used for usage in limiter.usage("ifs:b", [general, search])] == [0, 1]
    with pytest.raises(ValueError):
        limiter.usage("ifs:a", [general, Limit(5, 60)])


def test_redis_usage_is_shared_by_every_client_and_writes_nothing(
    redis_url: str, redis_prefix: str
):
    writer = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    reader = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    limits = [Limit(5, 60)]
    writer.try_acquire("t", 3, limits)
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.scan_iter(match=redis_prefix + "*"))
    before = {key: client.dump(key) for key in keys}

    assert [usage.used for usage in reader.usage("t", limits)] == [3]
    assert reader.usage("other", limits)[0].used == 0

    assert sorted(client.scan_iter(match=redis_prefix + "*")) == keys  # no key was created
    assert {key: client.dump(key) for key in keys} == before
    assert reader.shared and not LocalRateLimiter().shared


CAPACITY, WINDOW_S, WORKERS, GRANTS_EACH = 5, 0.5, 4, 5


def _hammer(
    make: Callable[[], RateLimiter], start: threading.Event | None, out: list[float]
) -> None:
    limiter = make()
    if start is not None:
        start.wait()
    limits = [Limit(CAPACITY, WINDOW_S)]
    while len(out) < GRANTS_EACH:
        if limiter.try_acquire("shared", 1, limits) == 0:
            out.append(time.time())


def _process_worker(redis_url: str, prefix: str, start, queue) -> None:
    stamps: list[float] = []
    start.wait()
    _hammer(lambda: RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=prefix), None, stamps)
    queue.put(stamps)


def check_budget(stamps: list[float]) -> None:
    # four times the capacity was granted in all, so the windows did roll on ...
    assert len(stamps) == WORKERS * GRANTS_EACH
    # ... yet no window ever saw more than the capacity
    assert most_in_any_window(stamps, WINDOW_S - SLACK_S) <= CAPACITY


def test_redis_processes_never_exceed_the_budget(redis_url: str, redis_prefix: str):
    context = multiprocessing.get_context("fork")
    start, queue = context.Event(), context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(redis_url, redis_prefix, start, queue))
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    start.set()
    stamps = [stamp for _ in workers for stamp in queue.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=10)
    check_budget(stamps)


def test_local_threads_never_exceed_the_budget():
    limiter = LocalRateLimiter()
    start = threading.Event()
    results: list[list[float]] = [[] for _ in range(WORKERS)]
    threads = [
        threading.Thread(target=_hammer, args=(lambda: limiter, start, out)) for out in results
    ]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(timeout=60)
    check_budget([stamp for out in results for stamp in out])


def test_window_check_detects_an_over_grant():
    # the checker itself must be able to fail
    assert most_in_any_window([0.0, 0.1, 0.2, 0.3, 0.35, 0.39], WINDOW_S - SLACK_S) == 6


def test_a_wait_for_tokens_is_observed_in_the_limiter_wait_metric() -> None:
    from prometheus_client import REGISTRY

    from connector.ratelimit import LocalRateLimiter, acquire

    def observed() -> float:
        value = REGISTRY.get_sample_value(
            "mlc_limiter_wait_seconds_count", {"system": "metricsprobe"}
        )
        return value or 0.0

    limiter = LocalRateLimiter()
    limits = [Limit(1, 0.2)]
    before = observed()
    acquire(limiter, "metricsprobe:t1", 1, limits, max_wait_s=1.0)  # free: no wait
    assert observed() == before
    acquire(limiter, "metricsprobe:t1", 1, limits, max_wait_s=1.0)  # waits for the window
    assert observed() == before + 1


def test_each_grant_is_booked_in_the_usage_history_and_nothing_else_is(limiter: RateLimiter):
    limits = [Limit(5, 60, "burst", per_request=True), Limit(100, 86_400, "daily")]
    assert limiter.try_acquire("pipedrive:h", 10, limits) == 0
    assert limiter.try_acquire("pipedrive:h", 20, limits) == 0
    assert limiter.try_acquire("pipedrive:h", 90, limits) > 0  # refused: not booked
    limiter.usage("pipedrive:h", limits)  # reading books nothing
    assert limiter.try_acquire("ifs:h", 1, [Limit(10, 60)]) == 0

    slots = limiter.history("pipedrive:h")

    # Both grants fall in one slot, or two when a slot boundary passed between them.
    assert sum(slot.cost for slot in slots) == 30
    assert sum(slot.requests for slot in slots) == 2
    assert all(slot.start % HISTORY_SLOT_S == 0 for slot in slots)
    assert abs(slots[-1].start - time.time()) < HISTORY_SLOT_S + 5
    assert [(slot.cost, slot.requests) for slot in limiter.history("ifs:h")] == [(1, 1)]
    assert limiter.history("nobody") == []


def test_the_in_process_history_keeps_a_day_of_slots():
    wall = [1_800_000_000.0]
    limiter = LocalRateLimiter(wall_clock=lambda: wall[0])
    limits = [Limit(1_000, 60)]
    for later in (0, HISTORY_S / 2, HISTORY_S / 2 + 2 * HISTORY_SLOT_S):
        wall[0] += later
        assert limiter.try_acquire("ifs:d", 2, limits) == 0

    # The first grant is more than a day old now: it has left the history.
    starts = [slot.start for slot in limiter.history("ifs:d")]
    assert starts == [1_800_000_000 + 43_200, 1_800_000_000 + 86_400 + 600]


def test_the_redis_history_expires_a_day_after_its_last_grant(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, prefix=redis_prefix)
    assert limiter.try_acquire("ifs:ttl", 1, [Limit(10, 60)]) == 0

    (key,) = [name for name in client.scan_iter(match=f"{redis_prefix}*history")]
    assert HISTORY_S < client.ttl(key) <= HISTORY_S + HISTORY_SLOT_S


def test_align_counts_what_the_remote_counts_and_never_less(limiter: RateLimiter):
    burst = Limit(10, 60, "burst", per_request=True)
    assert limiter.try_acquire("pd:a", 1, [burst]) == 0
    limiter.align("pd:a", burst, 8)  # the remote counts 8: 7 we did not see
    assert limiter.usage("pd:a", [burst])[0].used == 8
    limiter.align("pd:a", burst, 3)  # fewer than we count: ours stands
    assert limiter.usage("pd:a", [burst])[0].used == 8
    assert [limiter.try_acquire("pd:a", 1, [burst]) for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.try_acquire("pd:a", 1, [burst]) > 0


def test_align_after_grants_left_the_window_keeps_the_count_right(limiter: RateLimiter):
    burst = Limit(5, 0.2, "burst", per_request=True)
    for _ in range(3):
        assert limiter.try_acquire("pd:b", 1, [burst]) == 0
    time.sleep(0.3)
    limiter.align("pd:b", burst, 2)
    assert limiter.usage("pd:b", [burst])[0].used == 2
    time.sleep(0.3)
    assert limiter.usage("pd:b", [burst])[0].used == 0
    assert [limiter.try_acquire("pd:b", 1, [burst]) for _ in range(5)] == [0.0] * 5


def test_a_pause_refuses_every_grant_of_the_key_until_it_ends(limiter: RateLimiter):
    limits = [Limit(100, 60)]
    limiter.pause("pd:c", 0.3)
    wait = limiter.try_acquire("pd:c", 1, limits)
    assert 0.1 < wait <= 0.3
    assert 0.1 < limiter.paused_for("pd:c") <= 0.3
    assert limiter.try_acquire("pd:other", 1, limits) == 0
    limiter.pause("pd:c", 0.05)  # a shorter pause does not end the longer one
    assert limiter.paused_for("pd:c") > 0.1
    time.sleep(0.35)
    assert limiter.paused_for("pd:c") == 0.0
    assert limiter.try_acquire("pd:c", 1, limits) == 0


def test_a_reserve_is_left_to_acquisitions_without_one(limiter: RateLimiter):
    day, bulk_day = Limit(10, 60, "daily"), Limit(10, 60, "daily", reserve=4)
    assert limiter.try_acquire("pd:d", 5, [bulk_day]) == 0
    assert limiter.try_acquire("pd:d", 2, [bulk_day]) > 0  # would eat into the reserve
    assert limiter.usage("pd:d", [bulk_day])[0].remaining == 1
    assert limiter.try_acquire("pd:d", 5, [day]) == 0  # interactive work spends it
    assert limiter.usage("pd:d", [day])[0].remaining == 0


def test_redis_pause_is_shared_by_every_client(redis_url: str, redis_prefix: str):
    one = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    other = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    one.pause("pd:e", 5)
    assert other.try_acquire("pd:e", 1, [Limit(10, 60)]) > 4
    assert other.paused_for("pd:e") > 4


def test_a_settled_grant_counts_a_full_window_from_its_answer(limiter: RateLimiter):
    burst = Limit(2, 0.3, "burst", per_request=True)
    assert limiter.try_acquire("pd:f", 1, [burst]) == 0  # settled below
    assert limiter.try_acquire("pd:g", 1, [burst]) == 0  # never settled
    time.sleep(0.2)
    limiter.settle("pd:f", [burst])  # answered 0.2 s after its grant
    limiter.settle("pd:f", [burst])  # nothing granted since: no effect
    time.sleep(0.15)
    assert limiter.usage("pd:g", [burst])[0].used == 0  # counted from its grant: gone
    assert limiter.usage("pd:f", [burst])[0].used == 1  # counted from its answer: still in
    time.sleep(0.2)
    assert limiter.usage("pd:f", [burst])[0].used == 0
    assert [limiter.try_acquire("pd:f", 1, [burst]) for _ in range(2)] == [0.0, 0.0]


def test_only_granted_acquisitions_reach_the_history(limiter: RateLimiter):
    burst = Limit(10, 60, "burst", per_request=True)
    assert limiter.try_acquire("pd:h", 3, [burst]) == 0
    limiter.align("pd:h", burst, 6)  # corrects the window's count, asks for nothing
    limiter.settle("pd:h", [burst])
    limiter.pause("pd:h", 5)
    assert limiter.try_acquire("pd:h", 2, [burst]) > 0  # refused while paused

    assert [(slot.cost, slot.requests) for slot in limiter.history("pd:h")] == [(3, 1)]
    assert limiter.usage("pd:h", [burst])[0].used == 6
