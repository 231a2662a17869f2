"""Celery tasks: one explicitly named task per job (connector.jobs), each a few lines.

The bodies call the library; retries of transient errors, the log context and the metrics
are the base classes' (workers/base.py). Everything that is not transient is final and
leaves a failed audit row that `replay` can run again.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from connector import jobs, metrics
from connector.errors import ConnectorError, is_connection_loss, is_transient, summary
from connector.ratelimit import waits_at_most
from connector.replay import Replay
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, RETRYING, Attempt, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER
from connector.storage.work_items import WorkItems
from connector.sync import ENTITIES, JOB_FOR_ENTITY
from connector.sync.engine import Plan, TenantSync, plan_audit
from workers.app import celery_app, enqueue
from workers.base import (
    DISPATCHED_STARTED_WAIT_S,
    DISPATCHED_TOKEN_WAIT_S,
    ENTITY_FOR_JOB,
    ConnectorTask,
    RecordBatchTask,
    RecordSyncTask,
    StagePushTask,
)
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


@celery_app.task(name=jobs.PLAN_SYNC, bind=True, base=ConnectorTask)
def plan_sync(
    self: ConnectorTask,
    tenant: str,
    entity: str = "all",
    full: bool = False,
    run_id: str | None = None,
    replay_of: int | None = None,
) -> dict[str, Any]:
    """Read IFS in pages and store each record that needs work for the dispatcher.

    `entity` is customer, order, all, or a comma list (what a retry has still to plan).
    An entity whose plan fails for good is reported, and the ones after it are planned.
    """
    entities = list(ENTITIES if entity == "all" else entity.split(","))
    run_id = run_id or uuid.uuid4().hex  # one run, both entities (status shows it whole)
    try:
        sync = _tenant_sync(tenant)
    except ConnectorError as error:
        # A failed plan row per entity of the run (unknown tenant, missing credential), so
        # `sync --wait` sees the plan's error at once and `replay` can plan again.
        log = AuditLog(get_runtime().database)
        for name in entities:
            log.write(_plan_failure(self, tenant, name, full, run_id, error))
        return {"error": str(error)}
    summary: dict[str, Any] = {}
    for position, name in enumerate(entities):
        try:
            summary[name] = _plan(sync, Plan(tenant, name, run_id), full)
        except ConnectorError as error:
            audit_id = sync.audit.write(_plan_failure(self, tenant, name, full, run_id, error))
            if is_transient(error):
                remaining = ",".join(entities[position:])
                self.retry_transient(
                    error,
                    audit_id=audit_id,
                    kwargs={"tenant": tenant, "entity": remaining, "full": full, "run_id": run_id},
                )
            summary[name] = {"error": str(error)}
    return summary


def _plan(sync: TenantSync, plan: Plan, full: bool) -> dict[str, int]:
    # The records are stored page by page as IFS is read, for the dispatcher to release
    # within the tenant's budget (connector.dispatch), instead of all queued at once; the
    # plan row with the totals is written last, so a run never looks finished before its
    # plan is.
    job = JOB_FOR_ENTITY[plan.entity]
    items = WorkItems(sync.runtime.database)
    for page in sync.plan_pages(plan, full=full):
        items.add(
            plan.tenant,
            plan.run_id,
            job,
            [
                {
                    "entity": plan.entity,
                    "tenant": plan.tenant,
                    "key": item.key,
                    "snapshot": item.snapshot,
                    "hint": item.hint,
                    "full": full,
                    "run_id": plan.run_id,
                }
                for item in page
            ],
        )
    sync.audit.write(plan_audit(plan))
    return {"read": plan.read, "queued": plan.queued, "unchanged": plan.unchanged}


def _plan_failure(
    task: ConnectorTask,
    tenant: str,
    entity: str,
    full: bool,
    run_id: str,
    error: ConnectorError,
) -> Attempt:
    return Attempt(
        tenant=tenant,
        direction=IFS_TO_PIPEDRIVE,
        entity=entity,
        record_key="*",
        operation="plan",
        status=RETRYING if is_transient(error) else FAILED,
        error=str(error),
        correlation_id=run_id,
        attempt=task.attempt,
        replay_task=jobs.PLAN_SYNC,
        replay_args={"tenant": tenant, "entity": entity, "full": full},
    )


@celery_app.task(name=jobs.SYNC_CUSTOMER, bind=True, base=RecordSyncTask, entity=CUSTOMER)
def sync_customer(self: RecordSyncTask, tenant: str, key: str, **options: Any) -> str:
    """Upsert one IFS customer as a Pipedrive organization."""
    return _sync(self, tenant, key, options)


@celery_app.task(name=jobs.SYNC_ORDER, bind=True, base=RecordSyncTask, entity=ORDER)
def sync_order(self: RecordSyncTask, tenant: str, key: str, **options: Any) -> str:
    """Upsert one IFS customer order as a Pipedrive deal."""
    return _sync(self, tenant, key, options)


def _tenant_sync(tenant: str) -> TenantSync:
    """The tenant's sync; a tenant this process does not know yet is looked for in the tenants
    file at once (Runtime.tenant's recheck) before the task gives up on it."""
    runtime = get_runtime()
    runtime.tenant(tenant, recheck_unknown=True)
    return runtime.tenant_sync(tenant)


def _sync(task: RecordSyncTask, tenant: str, key: str, options: dict[str, Any]) -> str:
    # A record the dispatcher released names its stored work item (and which attempt this
    # is); the item is deleted in the transaction of the attempt's audit row when it ends,
    # or given back when it ends transiently (RecordSyncTask.retry_transient).
    item = options.pop("work_item", None)
    options.pop("attempt", None)
    try:
        sync = _tenant_sync(tenant)
    except ConnectorError as error:
        _unknown_tenant_row(tenant, task.entity, key, error)
        _finish(item)
        return FAILED
    if item is None:
        result = sync.sync_record(
            task.entity, key, attempt=task.attempt, redelivered=task.redelivered, **options
        )
        return result.outcome.value
    attempt, redelivered = task.attempt, task.redelivered
    return _sync_released(sync, task.entity, key, int(item), attempt, redelivered, options)


def _sync_released(
    sync: TenantSync,
    entity: str,
    key: str,
    item: int,
    attempt: int,
    redelivered: bool,
    options: dict[str, Any],
) -> str:
    # Released within the tenant's budget, so tokens are there; if not, the item goes back
    # to the store at once rather than hold the worker asleep (unless it has spent some).
    capped = waits_at_most(DISPATCHED_TOKEN_WAIT_S, once_started_s=DISPATCHED_STARTED_WAIT_S)
    with capped:
        result = sync.sync_record(
            entity, key, attempt=attempt, redelivered=redelivered, work_item=item, **options
        )
    return result.outcome.value


@celery_app.task(name=jobs.SYNC_RECORDS, bind=True, base=RecordBatchTask)
def sync_records(
    self: RecordBatchTask, tenant: str, records: list[dict[str, Any]]
) -> dict[str, int]:
    """Upsert several released records of one tenant, one by one (the dispatcher's batch)."""
    try:
        sync = _tenant_sync(tenant)
    except ConnectorError as error:
        for record in records:
            entity = ENTITY_FOR_JOB[str(record["job"])]
            _unknown_tenant_row(tenant, entity, str(record["key"]), error)
            _finish(int(record["work_item"]))
            metrics.record_sync(tenant, entity, FAILED)
        return {FAILED: len(records)}

    # A message that came again may have sent some of its records' creates already: each of
    # them then searches before it creates (TenantSync.sync_record). Besides a redelivery,
    # that is a retry of the whole message (sent again when the database was away before
    # any record could be given back): its records keep the attempt they were released with.
    redelivered = self.redelivered or bool(self.request.retries)

    def run_one(entity: str, key: str, item: int, attempt: int, options: dict[str, Any]) -> str:
        return _sync_released(sync, entity, key, item, attempt, redelivered, options)

    return self.run_records(tenant, records, run_one)


def _finish(item: int | None) -> None:
    if item is not None:
        WorkItems(get_runtime().database).finish(item)


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


@celery_app.task(name=jobs.PUSH_STAGE, bind=True, base=StagePushTask)
def push_stage_to_ifs(
    self: StagePushTask, tenant: str, webhook_event_id: int, **options: Any
) -> str:
    """Apply one Pipedrive deal stage change to the IFS sales order (If-Match, ETag)."""
    from connector.stage_push.push import push_stage_to_ifs as push

    return push(get_runtime(), tenant, webhook_event_id, attempt=self.attempt, **options).status


# The next scheduled run is the retry of these two.
@celery_app.task(name=jobs.RECONCILE_STAGES, bind=True, base=ConnectorTask, transient_retries=False)
def reconcile_stages(self: ConnectorTask, tenant: str) -> dict[str, Any]:
    """Apply deal stage changes that no webhook delivered (bans and outages lose events)."""
    from connector.stage_push.reconcile import reconcile_stages as reconcile

    def observe(status: str, seconds: float) -> None:
        metrics.observe_stage_push(tenant, status, seconds)

    return _jsonable(asdict(reconcile(get_runtime(), tenant, None, observe=observe)))


@celery_app.task(name=jobs.ENSURE_WEBHOOK, bind=True, base=ConnectorTask, transient_retries=False)
def ensure_webhook(self: ConnectorTask, tenant: str) -> dict[str, Any]:
    """Register the tenant's Pipedrive webhook again if Pipedrive deleted it."""
    from connector.webhooks.registration import ensure_webhook as ensure

    return _jsonable(asdict(ensure(get_runtime(), tenant)))


@celery_app.task(
    name=jobs.SWEEP_WEBHOOK_EVENTS, bind=True, base=ConnectorTask, transient_retries=False
)
def sweep_webhook_events(self: ConnectorTask) -> dict[str, Any]:
    """Queue again the webhook events that never finished (their message was lost); the
    next scheduled sweep is the retry of this one."""
    from connector.stage_push.sweep import sweep_unfinished_events
    from connector.storage.webhook_events import WebhookEvents

    runtime = get_runtime()
    events = WebhookEvents(runtime.database)
    try:
        swept = sweep_unfinished_events(
            events, enqueue, tenants=runtime.tenants, grace_s=runtime.settings.sweep_grace_s
        )
    except Exception as error:
        if not is_connection_loss(error):
            raise
        # During a Postgres or broker outage every sweep fails the same way: one line each,
        # not a traceback per sweep; the next scheduled sweep is the retry.
        log.warning(
            "sweep of webhook events skipped, connection lost (%s); the next sweep tries again",
            summary(error),
        )
        return {"skipped": summary(error)}
    return asdict(swept)


# Who a replay sent as a task (from Flower's API or a script) is recorded as, unless it says.
TASK_REQUESTER = "task"


@celery_app.task(name=jobs.REPLAY, bind=True, base=ConnectorTask)
def replay(self: ConnectorTask, audit_id: int, requested_by: str = TASK_REQUESTER) -> bool:
    """Re-run the record behind one failed audit row (idempotent)."""
    return _replay().one(audit_id, requested_by)


@celery_app.task(name=jobs.REPLAY_FAILED, bind=True, base=ConnectorTask)
def replay_failed(
    self: ConnectorTask,
    tenant: str | None = None,
    since: str | None = None,
    requested_by: str = TASK_REQUESTER,
) -> int:
    """Re-run every record whose newest attempt failed (optionally one tenant, since a time)."""
    moment = datetime.fromisoformat(since) if since else None
    return _replay().failed(tenant, moment, requested_by)


def _replay() -> Replay:
    return Replay(AuditLog(get_runtime().database), enqueue)


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    # Task results go through the JSON serializer: datetimes become ISO strings.
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result
