"""Celery tasks: thin, explicitly named wrappers around connector operations.

Retries are explicit: TransientError (rate limit, lock, remote 429/5xx after the HTTP
policy gave up) retries with a countdown; everything else is final and leaves a failed
audit row that `replay` can re-run.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from celery import Task

from connector import metrics
from connector.errors import ConnectorError, TransientError, is_transient, retry_after_s
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, RETRYING, Attempt, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER
from connector.storage.models import AuditRecord
from connector.sync import ENTITIES, JOB_FOR_ENTITY
from connector.sync.engine import Plan, plan_audit
from workers.app import celery_app
from workers.runtime import get_runtime, tenant_sync

log = logging.getLogger(__name__)

MAX_RETRIES = 10


def _countdown(retries: int, retry_after: float | None) -> float:
    # Full jitter, capped; never sooner than the remote asked for.
    backoff = random.uniform(0, min(60.0, 2.0 ** (retries + 1)))
    return max(backoff, retry_after or 0.0)


def _unknown_tenant_row(tenant: str, entity: str, key: str, error: ConnectorError) -> None:
    AuditLog(get_runtime().database).write(
        Attempt(
            tenant=tenant,
            direction=IFS_TO_PIPEDRIVE,
            entity=entity,
            record_key=key,
            operation="sync",
            status=FAILED,
            error=str(error),
        )
    )


@celery_app.task(name="ml_connector.plan_sync", bind=True, max_retries=MAX_RETRIES)
def plan_sync(
    self: Task,
    tenant: str,
    entity: str = "all",
    full: bool = False,
    run_id: str | None = None,
    replay_of: int | None = None,
) -> dict[str, Any]:
    """Read IFS in pages and queue one task per record that needs work.

    `entity` is customer, order, all, or a comma list (what a retry has still to plan).
    """
    entities = list(ENTITIES if entity == "all" else entity.split(","))
    summary: dict[str, Any] = {}
    try:
        sync = tenant_sync(tenant)
    except ConnectorError as error:
        _unknown_tenant_row(tenant, "plan", "*", error)
        return {"error": str(error)}
    retries = self.request.retries or 0
    run_id = run_id or uuid.uuid4().hex  # one run, both entities (status shows it whole)
    for position, name in enumerate(entities):
        plan = Plan(tenant, name, run_id)
        try:
            # Tasks go out page by page as IFS is read; the plan row with the totals is
            # written last, so a run never looks finished before its plan is.
            for page in sync.plan_pages(plan, full=full):
                for item in page:
                    celery_app.send_task(
                        JOB_FOR_ENTITY[name],
                        kwargs={
                            "tenant": tenant,
                            "key": item.key,
                            "snapshot": {"etag": item.etag, "data": item.data},
                            "hint": item.hint,
                            "full": full,
                            "run_id": plan.run_id,
                        },
                    )
        except ConnectorError as error:
            attempt = Attempt(
                tenant=tenant,
                direction=IFS_TO_PIPEDRIVE,
                entity=name,
                record_key="*",
                operation="plan",
                status=FAILED,
                error=str(error),
                correlation_id=plan.run_id,
                attempt=retries + 1,
                replay_task="ml_connector.plan_sync",
                replay_args={"tenant": tenant, "entity": name, "full": full},
            )
            if is_transient(error) and retries < MAX_RETRIES:
                attempt.status = RETRYING
                sync.audit.write(attempt)
                raise self.retry(
                    kwargs={
                        "tenant": tenant,
                        "entity": ",".join(entities[position:]),
                        "full": full,
                        "run_id": plan.run_id,
                    },
                    countdown=_countdown(retries, retry_after_s(error)),
                ) from error
            sync.audit.write(attempt)
            summary[name] = {"error": str(error)}
            continue
        sync.audit.write(plan_audit(plan))
        summary[name] = {"read": plan.read, "queued": plan.queued, "unchanged": plan.unchanged}
    return summary


def _sync(task: Task, entity: str, tenant: str, key: str, **options: Any) -> str:
    try:
        sync = tenant_sync(tenant)
    except ConnectorError as error:
        _unknown_tenant_row(tenant, entity, key, error)
        return "failed"
    retries = task.request.retries or 0
    try:
        result = sync.sync_record(entity, key, attempt=retries + 1, **options)
    except TransientError as error:
        if retries < MAX_RETRIES:
            raise task.retry(countdown=_countdown(retries, error.retry_after_s)) from error
        # Retries exhausted: the attempt's retrying row becomes the failed row replay finds.
        if error.audit_id is not None:
            sync.audit.mark_failed(error.audit_id)
        metrics.record_sync(tenant, entity, "failed")
        return "failed"
    metrics.record_sync(tenant, entity, result.outcome.value)
    return result.outcome.value


@celery_app.task(name="ml_connector.sync_customer", bind=True, max_retries=MAX_RETRIES)
def sync_customer(self: Task, tenant: str, key: str, **options: Any) -> str:
    """Upsert one IFS customer as a Pipedrive organization."""
    return _sync(self, CUSTOMER, tenant, key, **options)


@celery_app.task(name="ml_connector.sync_order", bind=True, max_retries=MAX_RETRIES)
def sync_order(self: Task, tenant: str, key: str, **options: Any) -> str:
    """Upsert one IFS customer order as a Pipedrive deal."""
    return _sync(self, ORDER, tenant, key, **options)


def latest_failed(tenant: str | None = None, since: datetime | None = None) -> list[AuditRecord]:
    """Failed rows that are still the newest attempt for their record (not fixed since)."""
    return AuditLog(get_runtime().database).latest_failed(tenant, since)


def requeue(row: AuditRecord) -> bool:
    """Queue the task that a failed audit row describes again; False if it cannot be."""
    if row.replay_task is None or row.replay_args is None:
        return False
    if not AuditLog(get_runtime().database).mark_replayed(row.id):
        return False
    celery_app.send_task(row.replay_task, kwargs={**row.replay_args, "replay_of": row.id})
    return True


@celery_app.task(name="ml_connector.replay", bind=True)
def replay(self: Task, audit_id: int) -> bool:
    """Re-run the record behind one failed audit row (idempotent)."""
    row = AuditLog(get_runtime().database).get(audit_id)
    return row is not None and requeue(row)


@celery_app.task(name="ml_connector.replay_failed", bind=True)
def replay_failed(self: Task, tenant: str | None = None, since: str | None = None) -> int:
    """Re-run every record whose newest attempt failed (optionally one tenant, since a time)."""
    since_at = datetime.fromisoformat(since) if since else None
    return sum(requeue(row) for row in latest_failed(tenant, since_at))


@celery_app.task(name="ml_connector.push_stage_to_ifs", bind=True, max_retries=MAX_RETRIES)
def push_stage_to_ifs(self: Task, tenant: str, webhook_event_id: int, **options: Any) -> str:
    """Apply one Pipedrive deal stage change to the IFS sales order (If-Match, ETag)."""
    from connector.stage_push.push import push_stage_to_ifs as push

    retries = self.request.retries or 0
    started = time.monotonic()
    try:
        outcome = push(get_runtime(), tenant, webhook_event_id, attempt=retries + 1, **options)
    except ConnectorError as error:
        metrics.observe_stage_push(tenant, "failed", time.monotonic() - started)
        if is_transient(error) and retries < MAX_RETRIES:
            raise self.retry(countdown=_countdown(retries, retry_after_s(error))) from error
        raise
    metrics.observe_stage_push(tenant, outcome.status, time.monotonic() - started)
    return outcome.status


@celery_app.task(name="ml_connector.reconcile_stages", bind=True)
def reconcile_stages(self: Task, tenant: str) -> dict[str, Any]:
    """Apply deal stage changes that no webhook delivered (bans and outages lose events)."""
    from connector.stage_push.reconcile import reconcile_stages as reconcile

    return _jsonable(asdict(reconcile(get_runtime(), tenant, None)))


@celery_app.task(name="ml_connector.ensure_webhook", bind=True)
def ensure_webhook(self: Task, tenant: str) -> dict[str, Any]:
    """Register the tenant's Pipedrive webhook again if Pipedrive deleted it."""
    from connector.webhooks.registration import ensure_webhook as ensure

    return _jsonable(asdict(ensure(get_runtime(), tenant)))


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    # Task results go through the JSON serializer: datetimes become ISO strings.
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result
