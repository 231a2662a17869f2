"""Provisioning a tenant's Pipedrive company: custom fields and pipeline created once, cached
in tenant_state, and never twice when workers race."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from connector.pipedrive.client import PipedriveClient
from connector.pipedrive.provisioning import (
    FIELD_KEYS,
    PIPELINE,
    FieldMisfit,
    ensure_custom_fields,
    ensure_layout,
    ensure_pipeline,
)
from connector.sync.mapping import DEAL_FIELDS, ORGANIZATION_FIELDS, map_customer
from connector.tenants import TenantConfig

pytestmark = pytest.mark.integration


def field_creations(pipedrive_sim) -> int:
    requests = pipedrive_sim.state.stats()["requests"]
    paths = ("organizationFields", "dealFields")
    return sum(requests.get(f"POST /api/v1/{path}", 0) for path in paths)


def test_creates_missing_fields_once_and_caches_keys(client, tenant, tenant_state, pipedrive_sim):
    keys = ensure_custom_fields(client, tenant, tenant_state)

    assert set(keys.organization) == set(ORGANIZATION_FIELDS)
    assert set(keys.deal) == set(DEAL_FIELDS)
    assert all(len(key) == 40 for key in [*keys.organization.values(), *keys.deal.values()])
    assert field_creations(pipedrive_sim) == len(ORGANIZATION_FIELDS) + len(DEAL_FIELDS)
    names = {f["key"]: f["name"] for f in client.list_fields("deal")}
    assert names[keys.deal["ifs_order_no"]] == tenant.fields.ifs_order_no

    sent = client.requests_sent
    assert ensure_custom_fields(client, tenant, tenant_state) == keys
    assert client.requests_sent == sent  # served from tenant_state
    assert tenant_state.get(tenant.id, FIELD_KEYS) == keys.to_json()


def test_an_existing_field_of_an_incompatible_type_is_refused_with_the_fix(
    client, tenant, tenant_state, pipedrive_sim
):
    pipedrive_sim.control(
        "seed",
        {
            "organization_fields": [
                {"name": tenant.fields.region, "field_type": "enum", "options": [{"label": "EU"}]}
            ]
        },
    )

    with pytest.raises(FieldMisfit) as refused:
        ensure_custom_fields(client, tenant, tenant_state)

    message = str(refused.value)
    assert f"organization field {tenant.fields.region!r} of type enum" in message
    assert "fields.region" in message and "another name" in message
    assert tenant_state.get(tenant.id, FIELD_KEYS) is None  # nothing half-adopted is cached


def test_finds_existing_fields_by_name_without_creating(
    client, tenant, tenant_state, pipedrive_sim
):
    seeded = pipedrive_sim.control(
        "seed",
        {"organization_fields": [{"name": tenant.fields.ifs_customer_id, "field_type": "varchar"}]},
    )["organization_fields"][0]
    first = ensure_custom_fields(client, tenant, tenant_state)
    assert first.organization["ifs_customer_id"] == seeded["key"]
    created = field_creations(pipedrive_sim)
    assert created == len(ORGANIZATION_FIELDS) + len(DEAL_FIELDS) - 1

    # A lost cache (or refresh=True) finds every field again instead of duplicating it.
    again = ensure_custom_fields(client, tenant, tenant_state, refresh=True)
    assert again == first
    assert field_creations(pipedrive_sim) == created


def test_two_workers_at_once_create_each_field_once(
    pipedrive_sim, tenant, tenant_state, vault, coordination
):
    vault.set(tenant.id, "pipedrive", "api_token", pipedrive_sim.api_token)
    clients = [
        PipedriveClient.for_tenant(tenant, vault=vault, coordination=coordination) for _ in range(2)
    ]
    barrier = threading.Barrier(len(clients))
    # One slot per worker, so what each one saw stays with it whatever order threads run in.
    layouts: list[tuple[object, object] | None] = [None] * len(clients)
    errors: list[BaseException] = []

    def run(slot: int, client: PipedriveClient) -> None:
        barrier.wait()
        try:
            fields = ensure_custom_fields(client, tenant, tenant_state)
            layouts[slot] = (fields, ensure_pipeline(client, tenant, tenant_state))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=slot_client) for slot_client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    # Both workers got the same field keys and the same pipeline.
    assert layouts[0] is not None and layouts[0] == layouts[1]
    assert field_creations(pipedrive_sim) == len(ORGANIZATION_FIELDS) + len(DEAL_FIELDS)
    assert pipedrive_sim.state.stats()["requests"]["POST /api/v2/pipelines"] == 1


def test_pipeline_and_stages_created_once(client, tenant, tenant_state, pipedrive_sim):
    ids = ensure_pipeline(client, tenant, tenant_state)

    assert list(ids.stage_ids) == tenant.stage_names
    stages = client.list_stages(ids.pipeline_id)
    assert [s["name"] for s in stages] == tenant.stage_names
    assert {s["name"]: s["id"] for s in stages} == ids.stage_ids
    assert tenant_state.get(tenant.id, PIPELINE) == ids.to_json()

    tenant_state.put(tenant.id, PIPELINE, {"pipeline_id": 0, "stage_ids": {}})  # stale cache
    assert ensure_pipeline(client, tenant, tenant_state) == ids
    requests = pipedrive_sim.state.stats()["requests"]
    assert requests["POST /api/v2/pipelines"] == 1
    assert requests["POST /api/v2/stages"] == len(tenant.stage_names)


def test_existing_pipeline_only_gets_missing_stages(client, tenant, tenant_state, pipedrive_sim):
    seeded = pipedrive_sim.control(
        "seed",
        {"pipelines": [{"name": tenant.pipedrive.pipeline, "stages": ["Planned", "Picked"]}]},
    )["pipelines"][0]

    ids = ensure_pipeline(client, tenant, tenant_state)

    assert ids.pipeline_id == seeded["id"]
    assert ids.stage_ids["Planned"] == seeded["stages"][0]
    assert ids.stage_ids["Picked"] == seeded["stages"][1]
    requests = pipedrive_sim.state.stats()["requests"]
    assert "POST /api/v2/pipelines" not in requests
    assert requests["POST /api/v2/stages"] == len(tenant.stage_names) - 2


def test_layout_feeds_the_mapping(client, tenant, tenant_state, pipedrive_sim) -> None:
    layout = ensure_layout(client, tenant, tenant_state)
    body = map_customer(
        tenant, {"CustomerId": "C-9", "Name": "Nine AB", "Cf_Region": "North"}, layout
    )
    created = client.create("organizations", body)
    assert created["custom_fields"][layout.organization_fields["ifs_customer_id"]] == "C-9"
    assert [o["id"] for o in client.search("organizations", "C-9")] == [created["id"]]


def test_tenant_state_store_round_trip(tenant, tenant_state, database) -> None:
    from connector.storage.tenant_state import DatabaseTenantState

    assert tenant_state.get(tenant.id, "x") is None
    tenant_state.put(tenant.id, "x", {"a": 1})
    tenant_state.put(tenant.id, "x", {"a": 2})
    assert DatabaseTenantState(database).get(tenant.id, "x") == {"a": 2}
    assert tenant_state.get("other-tenant", "x") is None
    tenant_state.delete(tenant.id, "x")
    assert tenant_state.get(tenant.id, "x") is None


EXTRA = {
    "delivery_terms": {
        "property": "DeliveryTerms",
        "field": "Delivery terms",
        "type": "enum",
        "options": {"EXW": "Ex works", "DAP": "Delivered at place", "DDP": "Delivered at place"},
    },
    "prepayment": {
        "property": "ProposedPrepaymentAmount",
        "field": "Prepayment",
        "type": "monetary",
    },
    "lead_days": {"property": "DeliveryLeadtime", "field": "Lead days", "type": "number"},
    "wanted": {"property": "WantedDeliveryDate", "field": "Wanted delivery", "type": "date"},
}


def _with_extra(tenant: TenantConfig, extra: dict[str, Any]) -> TenantConfig:
    body = tenant.model_dump()
    body["order_mapping"]["extra"] = extra
    return TenantConfig.model_validate(body)


def test_extra_fields_are_created_with_their_types_and_enum_options(
    client, tenant, tenant_state, pipedrive_sim
):
    tenant = _with_extra(tenant, EXTRA)

    layout = ensure_layout(client, tenant, tenant_state)

    fields = {f["key"]: f for f in client.list_fields("deal")}
    made = {logical: fields[layout.deal_fields[f"extra.{logical}"]] for logical in EXTRA}
    assert {name: f["field_type"] for name, f in made.items()} == {
        "delivery_terms": "enum",
        "prepayment": "monetary",
        "lead_days": "double",
        "wanted": "date",
    }
    assert made["wanted"]["name"] == "Wanted delivery"
    # Two IFS values share one label: the option exists once.
    options = {o["label"]: o["id"] for o in made["delivery_terms"]["options"]}
    assert set(options) == {"Ex works", "Delivered at place"}
    assert layout.deal_options["extra.delivery_terms"] == options
    # Cached: a second read asks Pipedrive nothing.
    sent = client.requests_sent
    assert ensure_layout(client, tenant, tenant_state) == layout
    assert client.requests_sent == sent


def test_an_extra_field_added_later_is_provisioned_on_the_next_read(
    client, tenant, tenant_state, pipedrive_sim
):
    keys = ensure_custom_fields(client, tenant, tenant_state)
    created = field_creations(pipedrive_sim)
    wider = _with_extra(tenant, {"wanted": EXTRA["wanted"]})

    found = ensure_custom_fields(client, wider, tenant_state)

    assert field_creations(pipedrive_sim) == created + 1
    assert found.deal == {**keys.deal, "extra.wanted": found.deal["extra.wanted"]}


def test_an_existing_extra_field_is_adopted_only_when_its_type_and_options_fit(
    client, tenant, tenant_state, pipedrive_sim
):
    seeded = pipedrive_sim.control(
        "seed",
        {
            "deal_fields": [
                {"name": "Lead days", "field_type": "double"},
                {"name": "Wanted delivery", "field_type": "varchar"},
                {
                    "name": "Delivery terms",
                    "field_type": "enum",
                    "options": [{"label": "Ex works"}, {"label": "FCA"}],
                },
            ]
        },
    )["deal_fields"]
    number = _with_extra(tenant, {"lead_days": EXTRA["lead_days"]})
    assert (
        ensure_custom_fields(client, number, tenant_state).deal["extra.lead_days"]
        == (seeded[0]["key"])
    )

    with pytest.raises(FieldMisfit) as wrong_type:
        ensure_custom_fields(client, _with_extra(tenant, {"wanted": EXTRA["wanted"]}), tenant_state)
    message = str(wrong_type.value)
    assert "deal field 'Wanted delivery' of type varchar" in message
    assert "writes a date there and needs date" in message
    assert "order_mapping.extra.wanted.field another name" in message

    enum_tenant = _with_extra(tenant, {"delivery_terms": EXTRA["delivery_terms"]})
    with pytest.raises(FieldMisfit) as lacking:
        ensure_custom_fields(client, enum_tenant, tenant_state)
    assert "without the option(s) 'Delivered at place'" in str(lacking.value)
    assert "order_mapping.extra.delivery_terms.options" in str(lacking.value)
