"""The names of the jobs the connector asks a queue to run (Celery task names, replay rows).

The library names work without knowing Celery: audit rows keep a job name and its keyword
arguments so that a replay can queue it again; workers/ registers a task under each name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Enqueue = Callable[[str, dict[str, Any]], None]
"""(job name, keyword arguments) -> None: hands one job to the queue (Celery in production)."""

PLAN_SYNC = "ml_connector.plan_sync"
SYNC_CUSTOMER = "ml_connector.sync_customer"
SYNC_ORDER = "ml_connector.sync_order"
# Several released records of one tenant in one message (the dispatcher's batches): kwargs
# `tenant` and `records`, each one record job's kwargs with its `job` name.
SYNC_RECORDS = "ml_connector.sync_records"
PUSH_STAGE = "ml_connector.push_stage_to_ifs"
RECONCILE_STAGES = "ml_connector.reconcile_stages"
ENSURE_WEBHOOK = "ml_connector.ensure_webhook"
REPLAY = "ml_connector.replay"
REPLAY_FAILED = "ml_connector.replay_failed"
SWEEP_WEBHOOK_EVENTS = "ml_connector.sweep_webhook_events"

RECORD_JOBS = frozenset({SYNC_CUSTOMER, SYNC_ORDER})


def is_interactive(job: str, kwargs: dict[str, Any]) -> bool:
    """Work someone waits for (a stage a sales user moved, an operator's replay): it goes to
    the interactive queue, which bulk work never fills. A record job is interactive when it
    replays a failed row (`replay_of`); a plan's records are bulk, released by the dispatcher."""
    if job in (PUSH_STAGE, REPLAY):
        return True
    return job in RECORD_JOBS and kwargs.get("replay_of") is not None
