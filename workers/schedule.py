"""The beat schedule, derived from the tenants file: sync, reconciliation, webhook check."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery.schedules import crontab

from connector import jobs
from connector.cron import parse_cron
from connector.tenants import TenantConfig


def tenant_crontab(cron: str) -> crontab:
    minute, hour, day_of_month, month, day_of_week = parse_cron(cron)
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month,
        day_of_week=day_of_week,
    )


def build_beat_schedule(tenants: Iterable[TenantConfig]) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    for tenant in tenants:
        every = tenant_crontab(tenant.schedule)
        schedule[f"{tenant.id}:sync"] = {
            "task": jobs.PLAN_SYNC,
            "schedule": every,
            "kwargs": {"tenant": tenant.id, "entity": "all"},
        }
        schedule[f"{tenant.id}:reconcile-stages"] = {
            "task": jobs.RECONCILE_STAGES,
            "schedule": every,
            "kwargs": {"tenant": tenant.id},
        }
        schedule[f"{tenant.id}:ensure-webhook"] = {
            "task": jobs.ENSURE_WEBHOOK,
            "schedule": crontab(minute="17", hour="3"),
            "kwargs": {"tenant": tenant.id},
        }
    return schedule
