"""The Tenants page's usage chart: a bar per slot of the last day, newest at the right."""

from __future__ import annotations

from datetime import UTC, datetime

from console.charts import HEIGHT, usage_chart

NOW = datetime(2026, 12, 1, 12, 2, tzinfo=UTC)  # in the slot that began at 12:00
SLOT = int(datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp())


def _history(slots, capacity=80_000, window_s=86_400.0):
    return {
        "slot_s": 300,
        "span_s": 86_400,
        "budget": {"name": "daily", "capacity": capacity, "window_s": window_s},
        "slots": [{"start": start, "cost": cost, "requests": cost // 2} for start, cost in slots],
        "cost": sum(cost for _, cost in slots),
    }


def test_bars_stand_at_their_slot_and_scale_to_the_busiest():
    chart = usage_chart(
        _history([(SLOT - 86_400, 999), (SLOT - 600, 40), (SLOT, 80)]), NOW, "tokens"
    )

    assert chart.width == 288
    # The slot a day old has left the chart; 10 minutes ago is two bars left of the newest.
    assert [(bar.x, bar.height) for bar in chart.bars] == [(285, HEIGHT // 2), (287, HEIGHT)]
    assert chart.bars[-1].title == "12:00 UTC: 80 tokens, 40 req."
    assert chart.summary.startswith("1,119 tokens in 24 h of 80,000 a day (1.4%)")


def test_a_per_minute_budget_is_named_as_such_and_an_idle_day_says_so():
    busy = usage_chart(_history([(SLOT, 12)], capacity=1_000, window_s=60.0), NOW, "requests")
    idle = usage_chart(_history([]), NOW, "requests")

    assert "12 requests in 24 h (limit 1,000 per 60 s)" in busy.summary
    assert idle.bars == [] and idle.summary == "no requests in 24 h"


def test_an_unreadable_history_shows_why():
    chart = usage_chart({"error": "Redis (CONNECTOR_REDIS_URL) unreachable: refused"}, NOW, "x")

    assert chart.error is not None and "unreachable" in chart.error and chart.bars == []
