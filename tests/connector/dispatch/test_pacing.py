"""What the dispatcher releases: budgets into records, and round-robin over tenants."""

from __future__ import annotations

from connector.dispatch.pacing import (
    Backlog,
    ItemCost,
    RecordCosts,
    allowance,
    counted,
    interleave,
    releases,
)
from connector.ratelimit import Limit, LimitUsage

BURST = Limit(20, 2.0, "burst", per_request=True)
SEARCH = Limit(10, 2.0, "search", per_request=True)
DAY = Limit(30_000, 86_400.0, "daily")


def test_a_fresh_budget_takes_a_whole_window_of_records():
    usages = [LimitUsage(BURST, 0), LimitUsage(SEARCH, 0), LimitUsage(DAY, 0)]
    assert allowance(usages, ItemCost()) == 20


def test_only_what_is_left_now_counts_never_tokens_still_to_come():
    assert allowance([LimitUsage(BURST, 15)], ItemCost()) == 5
    assert allowance([LimitUsage(BURST, 20, retry_after_s=0.1)], ItemCost()) == 0


def test_the_tightest_limit_decides_and_searches_are_not_counted():
    usages = [
        LimitUsage(BURST, 0),
        LimitUsage(SEARCH, 10, retry_after_s=1.9),
        LimitUsage(DAY, 30_000 - 25),
    ]
    # 25 tokens left today, 5 per write: 5 records, whatever the burst window allows.
    assert allowance(usages, ItemCost(requests=1, tokens=5)) == 5


def test_a_spent_day_allows_nothing():
    usages = [LimitUsage(BURST, 0), LimitUsage(DAY, 30_000, retry_after_s=3_600.0)]
    assert allowance(usages, ItemCost()) == 0


def test_quota_is_the_allowance_less_what_is_in_flight():
    assert Backlog("a", waiting=100, in_flight=15, allowance=20).quota == 5
    assert Backlog("a", waiting=3, in_flight=0, allowance=20).quota == 3
    assert Backlog("a", waiting=100, in_flight=30, allowance=20).quota == 0


def test_room_is_shared_round_robin_and_a_throttled_tenant_takes_none():
    backlogs = [
        Backlog("a", waiting=500, in_flight=20, allowance=20),  # throttled: all in flight
        Backlog("b", waiting=3, in_flight=0, allowance=20),
        Backlog("c", waiting=50, in_flight=0, allowance=20),
    ]
    order = releases(backlogs, room=10)
    assert "a" not in order
    assert order[:6] == ["b", "c", "b", "c", "b", "c"]
    assert counted(order) == {"b": 3, "c": 7}


def test_when_room_binds_every_tenant_gets_an_equal_share():
    backlogs = [Backlog(f"t{i}", waiting=1000, in_flight=0, allowance=100) for i in range(1000)]
    order = releases(backlogs, room=200, start=0)
    assert len(order) == 200
    assert set(counted(order).values()) == {1}  # 200 tenants, one record each


def test_the_turn_moves_the_first_tenant():
    backlogs = [Backlog(t, waiting=10, in_flight=0, allowance=10) for t in "abc"]
    assert releases(backlogs, room=2, start=0) == ["a", "b"]
    assert releases(backlogs, room=2, start=1) == ["b", "c"]
    assert releases(backlogs, room=2, start=5) == ["c", "a"]


def test_no_room_or_no_tenants_releases_nothing():
    assert releases([Backlog("a", 10, 0, 10)], room=0) == []
    assert releases([], room=10) == []


def test_interleave_alternates_tenants_and_skips_what_was_not_there():
    order = ["a", "b", "a", "b", "a"]
    # a had only two items due although three were asked for.
    assert interleave({"a": [1, 2], "b": [10, 11]}, order) == [1, 10, 2, 11]


def test_records_that_take_three_requests_get_a_third_of_the_window():
    usages = [LimitUsage(BURST, 0), LimitUsage(SEARCH, 0), LimitUsage(DAY, 0)]
    assert allowance(usages, ItemCost.of_requests(3)) == 6
    # The daily budget is charged 5 tokens per estimated request.
    assert allowance([LimitUsage(DAY, 30_000 - 30)], ItemCost.of_requests(3)) == 2


def test_a_tenants_cost_is_learnt_from_what_its_attempts_took():
    costs = RecordCosts()
    assert costs.cost("a") == ItemCost()  # nothing measured: one write
    costs.learn("a", requests=30, attempts=10)  # orders whose customers are new
    assert costs.cost("a").requests == 3.0
    assert costs.cost("b") == ItemCost()  # tenants apart
    # A look at a few attempts moves the mean part of the way only.
    costs.learn("a", requests=1, attempts=1)
    assert 2.7 < costs.cost("a").requests < 3.0
    # Their customers linked, the records take one request each again.
    costs.learn("a", requests=20, attempts=20)
    assert costs.cost("a").requests == 1.0


def test_unchanged_records_never_make_a_tenants_records_look_free():
    costs = RecordCosts()
    costs.learn("a", requests=0, attempts=50)
    assert costs.cost("a").requests == 1.0
    assert allowance([LimitUsage(BURST, 0)], costs.cost("a")) == 20


def test_tokens_leaving_the_window_before_a_record_asks_count_as_there():
    # 20 spent over the 2 s window, the oldest leaving in 0.1 s: a quarter of them within 0.5 s.
    spent = LimitUsage(BURST, 20, retry_after_s=0.1)
    assert allowance([spent], ItemCost(), ahead_s=0.5) == 5
    assert allowance([spent], ItemCost(), ahead_s=0.0) == 0
    # None leaves that soon (a burst just taken, a spent day): none counts.
    assert allowance([LimitUsage(BURST, 20, retry_after_s=1.5)], ItemCost(), ahead_s=0.5) == 0
    assert allowance([LimitUsage(DAY, 30_000, retry_after_s=3_600)], ItemCost(), ahead_s=0.5) == 0
    # Never more than the window holds.
    assert allowance([LimitUsage(BURST, 4, retry_after_s=0.0)], ItemCost(), ahead_s=9) == 20
