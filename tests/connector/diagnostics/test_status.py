"""A tenant's stored status: last run, webhook events, missing secrets, and the problems."""

from __future__ import annotations

from datetime import UTC, datetime

from connector.diagnostics.headroom import IN_PROCESS_NOTE
from connector.diagnostics.status import (
    last_run,
    missing_credentials,
    tenant_status,
    webhook_status,
)
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, Attempt, AuditLog
from connector.storage.models import WebhookEvent
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import RECONCILE_ACTION, WebhookEventStatus
from connector.webhooks.registration import STATE_KEY
from tests.connector.diagnostics.conftest import MakeRuntime
from tests.connector.webhooks.support import tenant_body


def _event(tenant: str, event_id: str, status: str, received: datetime, action: str = "change"):
    return WebhookEvent(
        tenant=tenant,
        event_id=event_id,
        entity="deal",
        action=action,
        payload={},
        status=status,
        received_at=received,
    )


def test_a_new_tenant_has_never_synced_and_names_every_fix(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for(tenant_body(auth="both"))

    status = tenant_status(runtime, tenant)

    assert status.last_run is None and status.failed_waiting == 0 and status.watermarks == []
    assert status.webhook["registered"] is False and status.webhook["events_received"] == 0
    missing = {
        (entry["system"], entry["name"]): entry["fix"] for entry in status.missing_credentials
    }
    assert missing == {
        ("ifs", "client_secret"): f"`ml-connector credentials set {tenant} ifs client_secret`",
        ("pipedrive", "api_token"): f"`ml-connector credentials set {tenant} pipedrive api_token`",
        (
            "webhook",
            "basic_user",
        ): f"`ml-connector webhooks ensure {tenant}` (generates and stores them)",
        (
            "webhook",
            "basic_password",
        ): f"`ml-connector webhooks ensure {tenant}` (generates and stores them)",
        ("webhook", "hmac_secret"): f"`ml-connector credentials set {tenant} webhook hmac_secret`",
    }
    assert status.problems[0] == f"never synced: run `ml-connector sync {tenant}`"
    assert f"no Pipedrive webhook registered: run `ml-connector webhooks ensure {tenant}`" in (
        status.problems
    )
    assert len([p for p in status.problems if p.startswith("missing ")]) == 5
    # The CLI's own in-process limiter: its own (empty) use, said to be only that.
    for system in ("ifs", "pipedrive"):
        assert status.headroom[system]["note"] == IN_PROCESS_NOTE
        assert all(limit["used"] == 0 for limit in status.headroom[system]["limits"])


def test_stored_credentials_are_not_missing(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for(tenant_body(auth="hmac"))
    runtime.vault.set(tenant, "ifs", "client_secret", "s3cret-ifs")
    runtime.vault.set(tenant, "webhook", "hmac_secret", "s3cret-hmac")

    missing = missing_credentials(runtime, runtime.tenant(tenant))

    assert [(entry["system"], entry["name"]) for entry in missing] == [("pipedrive", "api_token")]


def test_webhook_status_counts_deliveries_not_reconciliation(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for()
    DatabaseTenantState(runtime.database).put(
        tenant, STATE_KEY, {"webhook_id": 5, "subscription_url": "https://c.example/w"}
    )
    early, late = datetime(2026, 5, 1, 9, tzinfo=UTC), datetime(2026, 5, 1, 10, tzinfo=UTC)
    with runtime.database.session() as session:
        session.add(_event(tenant, "e-1", WebhookEventStatus.APPLIED, early))
        session.add(_event(tenant, "e-2", WebhookEventStatus.FAILED, early))
        # Reconciliation makes events of its own: not deliveries, but their failures count.
        session.add(_event(tenant, "r-1", WebhookEventStatus.FAILED, late, action=RECONCILE_ACTION))

    info = webhook_status(runtime, tenant)

    assert info == {
        "registered": True,
        "webhook_id": 5,
        "subscription_url": "https://c.example/w",
        "last_event_at": early.isoformat(),
        "events_received": 2,
        "events_failed": 2,
    }


def test_last_run_is_running_until_every_queued_record_is_done(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for()
    audit = AuditLog(runtime.database)
    run_id = f"run-{tenant}"

    def row(key: str, operation: str, **summary: int) -> None:
        audit.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                operation=operation,
                correlation_id=run_id,
                response_summary=summary or None,
            )
        )

    assert last_run(runtime, tenant) is None
    row("*", "plan", read=3, queued=2, unchanged=1)
    running = last_run(runtime, tenant)
    assert running is not None
    assert (running["run_id"], running["state"], running["finished_at"]) == (
        run_id,
        "running",
        None,
    )
    assert (running["read"], running["queued"], running["unchanged"]) == (3, 2, 1)

    row("O-1", "create")
    row("O-2", "update")

    finished = last_run(runtime, tenant)
    assert finished is not None and finished["state"] == "finished"
    assert (finished["created"], finished["updated"], finished["failed"]) == (1, 1, 0)
    assert finished["finished_at"] is not None and finished["started_at"] is not None
    assert tenant_status(runtime, tenant).problems[0].startswith("no Pipedrive webhook")


def test_a_sync_that_could_not_plan_is_a_problem_at_once(runtime_for: MakeRuntime) -> None:
    runtime, tenant = runtime_for()
    audit = AuditLog(runtime.database)
    for entity in ("customer", "order"):
        audit.write(
            Attempt(
                tenant,
                IFS_TO_PIPEDRIVE,
                entity,
                "*",
                operation="plan",
                status=FAILED,
                error="IFS HTTP 401: invalid_client",
                correlation_id=f"run-{tenant}",
            )
        )

    status = tenant_status(runtime, tenant)

    assert status.last_run is not None and status.last_run["state"] == "finished"
    (problem,) = [text for text in status.problems if "could not plan" in text]
    assert "customer: IFS HTTP 401: invalid_client; order: IFS HTTP 401" in problem
    assert f"`ml-connector check {tenant}`" in problem
