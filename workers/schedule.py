"""The beat schedule, derived from the tenants file: sync, reconciliation, webhook check; and
the sweeper of unfinished webhook events, every `sweep_interval_s`.

Celery beat reads `beat_schedule` once, at start. `LiveScheduler` (the app's
`beat_scheduler`) instead follows the tenants file through the process's live runtime
(connector.live_config): it ticks at least every few seconds, and when the configuration
changed it merges the new entries in, so an added tenant gets its schedule, a removed one
loses it, and a changed cron takes effect, all without restarting beat. Each tenant's cron
is checked with Celery's own crontab when it is loaded; a tenant whose cron Celery refuses
is left out and reported, never the schedule of the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from celery.beat import PersistentScheduler
from celery.schedules import crontab

from connector import jobs, metrics
from connector.cron import parse_cron
from connector.errors import ConfigError
from connector.tenants import TenantConfig

log = logging.getLogger(__name__)

CELERY_MAX_INTERVAL_S = 300.0  # celery.beat's own default loop interval


def tenant_crontab(cron: str) -> crontab:
    minute, hour, day_of_month, month, day_of_week = parse_cron(cron)
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month,
        day_of_week=day_of_week,
    )


def _checked_crontab(cron: str) -> crontab:
    every = tenant_crontab(cron)
    # Celery computes the next run only when it is asked: ask now, at load, so that a
    # schedule Celery cannot run is refused here rather than failing silently in beat.
    every.remaining_estimate(datetime.now(UTC))
    return every


def build_beat_schedule(
    tenants: Iterable[TenantConfig], problems: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The entries of every tenant whose schedule Celery accepts; the others' reasons go
    into `problems` (tenant id → message)."""
    schedule: dict[str, dict[str, Any]] = {}
    for tenant in tenants:
        try:
            every = _checked_crontab(tenant.schedule)
        except Exception as error:  # whatever Celery raises, it is this tenant's alone
            message = (
                f"tenant {tenant.id!r}: key 'schedule': Celery refuses {tenant.schedule!r}: {error}"
            )
            log.error("beat: %s; its syncs are not scheduled", message)
            if problems is not None:
                # The caller reports it (a live beat: with every check, counted there).
                problems[tenant.id] = message
            else:
                metrics.count_config_reload_error(tenant.id)
            continue
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


def sweeper_entries(interval_s: float) -> dict[str, dict[str, Any]]:
    """The entries of every deployment, whatever its tenants: the sweeper of webhook events
    whose message was lost (connector.stage_push.sweep). No ':' in the name: not a tenant's."""
    return {
        "sweep-webhook-events": {"task": jobs.SWEEP_WEBHOOK_EVENTS, "schedule": interval_s},
    }


class LiveScheduler(PersistentScheduler):
    """Celery's persistent scheduler, with entries rebuilt whenever the tenants file changes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from workers.runtime import get_runtime

        # Beat sends to workers elsewhere: a memory:// queue or a private SQLite file would
        # schedule work that no worker ever sees. Refused here, before anything is opened
        # (beat builds its scheduler before its beat_init signal).
        # Opens nothing yet: its database is made on first use.
        self._runtime = get_runtime(role="beat")
        try:
            self._runtime.settings.require_shared_setup("beat")
        except ConfigError as error:
            log.critical("%s", error)
            raise SystemExit(1) from error
        port = self._runtime.settings.beat_metrics_port
        if port is not None:
            # Beat counts its own configuration problems (mlc_config_reload_errors_total).
            metrics.start_worker_metrics_server(port)
        live = self._runtime.live
        self._generation = -1
        self.problems: dict[str, str] = {}
        app = args[0] if args else kwargs["app"]
        longest = kwargs.get("max_interval") or app.conf.beat_max_loop_interval
        if live is not None:
            # Beat sleeps until the next due entry: wake often enough to notice a change.
            # (At least a second: Celery takes 0 for "its default".)
            wake = min(longest or CELERY_MAX_INTERVAL_S, live.interval_s)
            kwargs["max_interval"] = max(wake, 1.0)
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.app.conf.beat_schedule = self._current_entries()
        super().setup_schedule()

    def _current_entries(self) -> dict[str, dict[str, Any]]:
        live = self._runtime.live
        self._runtime.refresh_if_stale()
        self._generation = live.generation if live is not None else 0
        self.problems = {}
        entries = build_beat_schedule(self._runtime.tenants.values(), self.problems)
        if live is not None:
            # Reported, logged and counted with every check until the cron is fixed, and
            # published for `status` and /readyz like the file's own problems.
            live.note_role_problems(
                {
                    tenant_id: [f"{message} (its syncs are not scheduled)"]
                    for tenant_id, message in self.problems.items()
                }
            )
        entries.update(sweeper_entries(self._runtime.settings.sweep_interval_s))
        return entries

    def tick(self, *args: Any, **kwargs: Any) -> float:
        live = self._runtime.live
        if live is not None:
            self._runtime.refresh_if_stale()
            if live.generation != self._generation:
                entries = self._current_entries()
                # Celery's stubs type the argument as entries; it takes beat_schedule dicts.
                self.merge_inplace(entries)  # type: ignore[arg-type]
                self.install_default_entries(self.schedule)
                self.sync()
                log.info("beat: schedule rebuilt: %s", ", ".join(sorted(entries)) or "empty")
        delay: float = super().tick(*args, **kwargs)
        return delay
