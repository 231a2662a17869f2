"""Cron strings for tenant schedules: valid forms pass, each invalid form says why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from celery.schedules import crontab

from connector.cron import CronError, next_run, parse_cron


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "*/15 * * * *",
        "0 6-18/2 * * mon-fri",
        "5,35 0 1 jan,jul *",
        "0 0 * * 7",
        "  0   3 * * SUN ",
    ],
)
def test_valid_cron_strings_are_accepted(expression):
    assert len(parse_cron(expression)) == 5


def test_fields_come_back_in_order():
    assert parse_cron("1 2 3 4 5") == ("1", "2", "3", "4", "5")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "got 6"),
        ("60 * * * *", "minute field: 60 is outside 0-59"),
        ("* 24 * * *", "hour field: 24 is outside 0-23"),
        ("* * 0 * *", "day of month field: 0 is outside 1-31"),
        ("* * * 13 *", "month field: 13 is outside 1-12"),
        ("* * * * 8", "day of week field: 8 is outside 0-6"),
        ("*/0 * * * *", "minute field: step 0"),
        ("30-10 * * * *", "minute field: range '30-10' runs backwards"),
        ("* * * foo *", "month field: 'foo' is not a number"),
        ("? * * * *", "minute field: '?' is not valid cron syntax"),
        ("1,,2 * * * *", "minute field: '' is not valid cron syntax"),
    ],
)
def test_invalid_cron_strings_say_which_field_and_why(expression, reason):
    with pytest.raises(CronError) as caught:
        parse_cron(expression)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 0 31 2 *", "day of month field: '31' never occurs in month '2'"),
        ("0 0 30,31 feb *", "never occurs in month 'feb'"),
        ("0 0 31 4,6 *", "never occurs"),
    ],
)
def test_a_day_that_no_listed_month_has_is_refused(expression, reason):
    with pytest.raises(CronError) as caught:
        parse_cron(expression)
    assert reason in str(caught.value)


def test_sunday_as_7_comes_back_as_0():
    assert parse_cron("0 3 * * 7")[4] == "0"
    assert parse_cron("0 3 * * 5-7")[4] == "0,5,6"
    assert parse_cron("0 3 * * 1-5")[4] == "1-5"


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "*/15 * * * *",
        "0 6-18/2 * * mon-fri",
        "5,35 0 1 jan,jul *",
        "0 3 * * 7",
        "0 3 * * 0,7",
        "0 3 * * 6-7",
        "0 0 29 2 *",
        "0 0 31 1,2 *",
        "0 0 31 * *",
        "59 23 30 4 sun",
    ],
)
def test_every_accepted_schedule_is_one_celery_beat_accepts(expression):
    # Beat builds its schedule with Celery's crontab: what `tenant validate` lets through
    # must never be refused there (a refused tenant once emptied beat's whole schedule).
    from datetime import UTC, datetime

    from celery.schedules import crontab

    minute, hour, day, month, weekday = parse_cron(expression)
    schedule = crontab(
        minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday
    )
    assert schedule.remaining_estimate(datetime.now(UTC)).total_seconds() >= 0


@pytest.mark.parametrize(
    "expression",
    ["*/15 * * * *", "0 3 * * *", "0 0 1 * 1", "30 2 29 2 *", "0 9 * * 0", "5,35 6-18/2 * * 1-5"],
)
@pytest.mark.parametrize(
    "after",
    [datetime(2026, 3, 5, 10, 7, 30, tzinfo=UTC), datetime(2027, 12, 31, 23, 59, tzinfo=UTC)],
)
def test_next_run_is_when_celery_beat_fires_next(expression, after):
    minute, hour, day, month, weekday = parse_cron(expression)
    # Celery's own answer, with its clock stopped at `after` and its last run then.
    schedule = crontab(minute, hour, weekday, day, month, nowfun=lambda: after)
    celery_next = after + schedule.remaining_estimate(after)
    assert next_run(expression, after) == celery_next


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", "2026-03-02T10:07:30", "2026-03-02T10:08:00"),
        ("*/15 * * * *", "2026-03-02T10:15:00", "2026-03-02T10:30:00"),
        ("0 3 * * 7", "2026-03-02T10:07:00", "2026-03-08T03:00:00"),  # Sunday as 7
        ("0 9 * * 1-5", "2026-03-06T09:00:00", "2026-03-09T09:00:00"),  # Friday → Monday
        ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
    ],
)
def test_next_run_is_the_first_scheduled_minute_after(
    expression: str, after: str, expected: str
) -> None:
    from datetime import UTC, datetime

    from connector.cron import next_run

    moment = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert next_run(expression, moment) == datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_next_run_agrees_with_celery_crontab() -> None:
    from datetime import UTC, datetime, timedelta

    from connector.cron import next_run
    from workers.schedule import tenant_crontab

    start = datetime(2026, 3, 2, 10, 7, 30, tzinfo=UTC)
    for expression in ("*/7 * * * *", "0 6-18/2 * * mon-fri", "5,35 0 1 jan,jul *", "0 0 * * 7"):
        ours = next_run(expression, start)
        # Celery: time left until the next run, for a last run at `start`, asked at `start`.
        every = tenant_crontab(expression)
        every.nowfun = lambda: start
        celery = start + every.remaining_estimate(start)
        assert abs(ours - celery) < timedelta(minutes=1), (expression, ours, celery)
