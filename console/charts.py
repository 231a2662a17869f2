"""The Tenants page's small charts of budget usage over the last day, drawn as inline SVG
on the server (no script, nothing for the browser to build)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HEIGHT = 28  # pixels; one pixel of width per slot of the history


@dataclass(frozen=True)
class Bar:
    x: int
    height: int
    title: str  # the slot's time and usage, shown on hover


@dataclass(frozen=True)
class UsageChart:
    bars: list[Bar]
    width: int
    height: int
    summary: str  # the day's usage in words, also the chart's accessible label
    error: str | None = None
    note: str | None = None


def usage_chart(history: dict[str, Any], now: datetime, unit: str) -> UsageChart:
    """Bars of what each slot of the last day spent (`history` from usage_history), the
    newest at the right, scaled to the busiest slot; `unit` names the cost (tokens, requests)."""
    if "error" in history:
        return UsageChart([], 0, HEIGHT, "usage history unavailable", error=history["error"])
    slot_s, span_s = int(history["slot_s"]), int(history["span_s"])
    count = span_s // slot_s
    newest = int(now.timestamp()) // slot_s
    shown = [
        (count - 1 - (newest - int(slot["start"]) // slot_s), slot)
        for slot in history["slots"]
        if slot["cost"]
    ]
    shown = [(position, slot) for position, slot in shown if 0 <= position < count]
    peak = max((int(slot["cost"]) for _, slot in shown), default=0)
    bars = []
    for position, slot in shown:
        when = datetime.fromtimestamp(int(slot["start"]), UTC).strftime("%H:%M")
        height = max(1, round(HEIGHT * int(slot["cost"]) / peak))
        bars.append(
            Bar(position, height, f"{when} UTC: {slot['cost']} {unit}, {slot['requests']} req.")
        )
    budget = history["budget"]
    total = int(history["cost"])
    if budget["window_s"] >= span_s:  # a daily budget: how much of it the day took
        share = 100 * total / budget["capacity"]
        of = f"of {budget['capacity']:,} a day ({share:.1f}%)"
    else:
        of = f"(limit {budget['capacity']:,} per {int(budget['window_s'])} s)"
    summary = (
        f"{total:,} {unit} in 24 h {of}; busiest {slot_s // 60} min: {peak:,}"
        if total
        else f"no {unit} in 24 h"
    )
    return UsageChart(bars, count, HEIGHT, summary, note=history.get("note"))
