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
    assert created.webhook_id == again.webhook_id and created.webhook_ids == again.webhook_ids
    webhooks = pipedrive_sim.state.list_webhooks()
    # One webhook per event the connector needs (never creates: its own would echo back).
    assert sorted((w["version"], w["event_action"], w["event_object"]) for w in webhooks) == [
        ("2.0", "change", "deal"),
        ("2.0", "delete", "deal"),
        ("2.0", "delete", "organization"),
    ]
    for webhook in webhooks:
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

    assert repaired.action == "repaired"
    assert sorted(repaired.removed) == sorted(first.webhook_ids.values())
    webhooks = pipedrive_sim.state.list_webhooks()
    assert sorted(w["id"] for w in webhooks) == sorted(repaired.webhook_ids.values())
    assert {w["http_auth_password"] for w in webhooks} == {"rotated-by-an-operator"}


def test_ensure_trusts_its_registration_when_pipedrive_hides_the_credentials(setup, pipedrive_sim):
    runtime, tenant_id, _ = setup
    first = ensure_webhook(runtime, tenant_id)
    pipedrive_sim.state.configure({"hide_webhook_credentials": True})
    assert all(w["http_auth_user"] is None for w in webhooks_for(runtime, tenant_id))

    again = [ensure_webhook(runtime, tenant_id) for _ in range(3)]  # e.g. three daily runs

    assert [status.action for status in again] == ["ok"] * 3
    assert all(status.webhook_ids == first.webhook_ids for status in again)
    assert len(pipedrive_sim.state.list_webhooks()) == 3

    # A real defect is still repaired: the vault's password changed since registration.
    runtime.vault.set(tenant_id, "webhook", "basic_password", "rotated")
    repaired = ensure_webhook(runtime, tenant_id)
    assert repaired.action == "repaired" and set(repaired.removed) == set(
        first.webhook_ids.values()
    )


def test_ensure_replaces_the_old_catch_all_deal_webhook(setup, pipedrive_sim):
    runtime, tenant_id, _ = setup
    first = ensure_webhook(runtime, tenant_id)
    user = runtime.vault.get(tenant_id, "webhook", "basic_user")
    password = runtime.vault.get(tenant_id, "webhook", "basic_password")
    client = runtime.pipedrive_client(tenant_id)
    old = client.create_webhook(first.subscription_url, "*", "deal", user, password)

    repaired = ensure_webhook(runtime, tenant_id)

    assert repaired.removed == [int(old["id"])] and repaired.webhook_ids == first.webhook_ids


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

    assert pipedrive_sim.wait_for(lambda: len(calls) >= 1)
    rows = events_of(runtime, tenant_id)
    assert [row.action for row in rows] == ["change"]  # the create is not subscribed to
    moved = [row for row in rows if row.action == "change"]
    assert len(moved) == 1 and moved[0].entity_id == deal["id"]
    assert moved[0].payload["previous"]["stage_id"] == planned["id"]


def test_ensure_needs_a_subscription_url(postgres_url):
    prepare_database(postgres_url)
    tenant_id = unique_tenant("reg")
    runtime = make_runtime(postgres_url, {tenant_id: tenant_body()})

    with pytest.raises(ConfigError, match="subscription_url"):
        ensure_webhook(runtime, tenant_id)
