"""Five-field cron strings of per-tenant sync schedules: validation, and when they run next."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# (name, low, high, symbolic names)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_ITEM = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


class CronError(ValueError):
    """A cron string that is not five valid fields."""


def _value(token: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if token in names:
        return names.index(token) + (low if low == 1 else 0)
    if not token.isdigit():
        raise CronError(f"{name} field: {token!r} is not a number")
    number = int(token)
    # Cron also accepts 7 for Sunday.
    upper = 7 if name == "day of week" else high
    if not low <= number <= upper:
        raise CronError(f"{name} field: {number} is outside {low}-{high}")
    return number


# The most days each month can have (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SUNDAY_ALIAS = 7


def _expand(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    """Every value a field stands for; CronError naming the field when it is not valid."""
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if not match:
            raise CronError(f"{name} field: {item!r} is not valid cron syntax")
        span, step = match.group(1), match.group(2)
        if step is not None and int(step) == 0:
            raise CronError(f"{name} field: step 0 in {item!r}")
        if span == "*":
            first, last = low, high
        else:
            bounds = [_value(t, name, low, high, names) for t in span.split("-")]
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise CronError(f"{name} field: range {span!r} runs backwards")
            first, last = bounds[0], bounds[-1]
            if step is not None and len(bounds) == 1:
                last = high  # "5/10" means from 5 to the end, every 10
        values.update(range(first, last + 1, int(step or 1)))
    return values


def parse_cron(expression: str) -> tuple[str, str, str, str, str]:
    """Check `expression` and return its five fields (minute hour day month weekday), in the
    form Celery's crontab accepts: it refuses what cron allows for Sunday (7), so 7 comes back
    as 0, and a day of the month that no listed month has (31 in February) is an error here
    rather than a beat schedule that silently never loads."""
    fields = expression.lower().split()
    if len(fields) != 5:
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    expanded = [
        _expand(text, name, low, high, names)
        for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
    ]
    days, months, weekdays = expanded[2], expanded[3], expanded[4]
    if not any(day <= _MONTH_DAYS[month - 1] for day in days for month in months):
        raise CronError(f"day of month field: {fields[2]!r} never occurs in month {fields[3]!r}")
    weekday = fields[4]
    if _SUNDAY_ALIAS in weekdays:
        normalized = sorted({0 if day == _SUNDAY_ALIAS else day for day in weekdays})
        weekday = ",".join(str(day) for day in normalized)
    return fields[0], fields[1], fields[2], fields[3], weekday


def _fields(expression: str) -> list[set[int]]:
    fields = parse_cron(expression)
    return [
        _expand(text, name, low, high, names)
        for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
    ]


def next_run(expression: str, after: datetime) -> datetime:
    """The first minute strictly after `after` (UTC) at which beat runs `expression`.

    Celery's crontab needs the day of the month AND the day of the week to match (cron
    takes either when both are restricted); this follows Celery, since beat runs the syncs.
    """
    minutes, hours, days, months, weekdays = _fields(expression)
    weekdays = {0 if day == _SUNDAY_ALIAS else day for day in weekdays}
    moment = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)
    start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    # Eight years cover every date a valid expression names (29 February included).
    for offset in range(366 * 8):
        day = start.date() + timedelta(days=offset)
        # isoweekday: Monday 1 … Sunday 7; cron: Sunday 0 … Saturday 6.
        if day.month not in months or day.day not in days or day.isoweekday() % 7 not in weekdays:
            continue
        for hour in sorted(hours):
            for minute in sorted(minutes):
                candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                if candidate >= start:
                    return candidate
    raise CronError(f"{expression!r} never runs")
