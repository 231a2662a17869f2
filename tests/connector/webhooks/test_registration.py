"""Registering and repairing the tenant's webhook in the Pipedrive simulator; first delivery."""

from __future__ import annotations

from typing import Any

import pytest

from connector.errors import ConfigError
from connector.webhooks.registration import ensure_webhook, webhooks_for
from simulators.serving import RunningServer
from tests.connector.webhooks.support import (
    events_of,
    make_runtime,
    prepare_database,
    tenant_body,
    unique_tenant,
)
from webhook_receiver.app import create_app


@pytest.fixture
def setup(postgres_url, pipedrive_sim):
    prepare_database(postgres_url)
    tenant_id = unique_tenant("reg")
    calls: list[tuple[str, dict[str, Any]]] = []
    body = tenant_body()
    body["pipedrive"]["api_domain"] = pipedrive_sim.url
    # The subscription URL names the receiver's port, so the server starts before its app.
    app: dict[str, Any] = {}
    receiver = RunningServer(lambda environ, respond: app["wsgi"](environ, respond)).start()
    body["webhook"]["subscription_url"] = f"{receiver.url}/webhooks/pipedrive/{tenant_id}"
    runtime = make_runtime(postgres_url, {tenant_id: body})
    app["wsgi"] = create_app(runtime, lambda name, kwargs: calls.append((name, kwargs)))
    runtime.vault.set(tenant_id, "pipedrive", "api_token", pipedrive_sim.api_token)
    yield runtime, tenant_id, calls
    receiver.stop()
    runtime.close()


def test_ensure_creates_a_v2_deal_webhook_with_vault_credentials_and_is_idempotent(
    setup, pipedrive_sim
):
    runtime, tenant_id, _ = setup

    created = ensure_webhook(runtime, tenant_id)
    again = ensure_webhook(runtime, tenant_id)

    assert created.action == "created" and again.action == "ok"
    assert created.webhook_id == again.webhook_id
    [webhook] = pipedrive_sim.state.list_webhooks()
    assert (webhook["version"], webhook["event_object"], webhook["event_action"]) == (
        "2.0",
        "deal",
        "*",
    )
    assert webhook["http_auth_user"] == runtime.vault.get(tenant_id, "webhook", "basic_user")
    assert webhook["http_auth_password"] == runtime.vault.get(
        tenant_id, "webhook", "basic_password"
    )
    assert all(
        "http_auth_password" not in w for w in created.webhooks + webhooks_for(runtime, tenant_id)
    )


def test_ensure_repairs_a_webhook_whose_credentials_no_longer_match(setup, pipedrive_sim):
    runtime, tenant_id, _ = setup
    first = ensure_webhook(runtime, tenant_id)
    runtime.vault.set(tenant_id, "webhook", "basic_password", "rotated-by-an-operator")

    repaired = ensure_webhook(runtime, tenant_id)

    assert repaired.action == "repaired" and repaired.removed == [first.webhook_id]
    [webhook] = pipedrive_sim.state.list_webhooks()
    assert webhook["id"] == repaired.webhook_id
    assert webhook["http_auth_password"] == "rotated-by-an-operator"


def test_the_registered_webhook_delivers_a_deal_move_to_the_receiver(setup, pipedrive_sim):
    runtime, tenant_id, calls = setup
    ensure_webhook(runtime, tenant_id)
    state = pipedrive_sim.state
    pipeline = state.add_pipeline("IFS sales orders")
    planned = state.add_stage("Planned", pipeline["id"])
    released = state.add_stage("Released", pipeline["id"])
    deal = state.create(
        "deal", {"title": "C1", "pipeline_id": pipeline["id"], "stage_id": planned["id"]}
    )

    state.move_deal(deal["id"], stage_id=released["id"])

    assert pipedrive_sim.wait_for(lambda: len(calls) >= 2)
    rows = events_of(runtime, tenant_id)
    moved = [row for row in rows if row.action == "change"]
    assert len(moved) == 1 and moved[0].entity_id == deal["id"]
    assert moved[0].payload["previous"]["stage_id"] == planned["id"]


def test_ensure_needs_a_subscription_url(postgres_url):
    prepare_database(postgres_url)
    tenant_id = unique_tenant("reg")
    runtime = make_runtime(postgres_url, {tenant_id: tenant_body()})

    with pytest.raises(ConfigError, match="subscription_url"):
        ensure_webhook(runtime, tenant_id)
