"""IFS records → Pipedrive bodies by the tenant's mapping (pure: no HTTP, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from connector.errors import RecordError
from connector.sync.mapping import (
    DEAL_FIELDS,
    ORGANIZATION_FIELDS,
    PipedriveLayout,
    changed_fields,
    customer_properties,
    map_customer,
    map_order,
    order_properties,
)
from connector.tenants import TenantConfig

LAYOUT = PipedriveLayout(
    organization_fields={name: f"org-{name}" for name in ORGANIZATION_FIELDS},
    deal_fields={name: f"deal-{name}" for name in DEAL_FIELDS},
    pipeline_id=7,
    stage_ids={"Planned": 70, "Released": 71, "Delivered": 76},
)


def tenant(**overrides: Any) -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "id": "acme",
            "ifs": {"base_url": "https://ifs.example.com", "namespace": "acme"},
            "pipedrive": {"api_domain": "https://acme.pipedrive.com"},
            **overrides,
        }
    )


CUSTOMER = {
    "CustomerId": "C00042",
    "Name": "  Nordic Marine AB ",
    "Country": "SE",
    "Cf_Cost_Center": "CC-4100",
    "Cf_Profit_Center": "",
    "Cf_Region": None,
}
ORDER = {
    "OrderNo": "C1000000042",
    "CustomerNo": "C00042",
    "CustomerName": "Nordic Marine AB",
    "TotalAmount": "1234.50",
    "CurrencyCode": "SEK",
    "Objstate": "Released",
    "Cf_Cost_Center": "CC-4100",
    "Cf_Profit_Center": "PC-100",
    "RegionCode": "EU-NORTH",
}


def test_customer_becomes_an_organization_with_its_key_and_gl_dimensions() -> None:
    body = map_customer(tenant(), CUSTOMER, LAYOUT)
    assert body == {
        "name": "Nordic Marine AB",
        "custom_fields": {
            "org-ifs_customer_id": "C00042",
            "org-cost_center": "CC-4100",
            "org-profit_center": None,  # empty in IFS: cleared, not sent as ""
            "org-region": None,
        },
        "address": {"value": "SE", "country": "SE"},
    }


def test_customer_without_country_has_no_address() -> None:
    body = map_customer(tenant(), {**CUSTOMER, "Country": None}, LAYOUT)
    assert "address" not in body


def test_customer_key_is_read_from_the_mapped_property() -> None:
    renamed = {"CustomerNo" if k == "CustomerId" else k: v for k, v in CUSTOMER.items()}
    configured = tenant(customer_mapping={"customer_id": "CustomerNo"})
    body = map_customer(configured, renamed, LAYOUT)
    assert body["custom_fields"]["org-ifs_customer_id"] == "C00042"
    with pytest.raises(RecordError, match="'CustomerNo'"):
        map_customer(configured, CUSTOMER, LAYOUT)


def test_customer_without_a_name_is_a_record_error_naming_the_property() -> None:
    with pytest.raises(RecordError, match=r"IFS customer C00042: required property 'Name'"):
        map_customer(tenant(), {**CUSTOMER, "Name": "   "}, LAYOUT)


def test_order_becomes_a_deal_with_stage_status_and_value() -> None:
    body = map_order(tenant(), ORDER, LAYOUT, 501)
    assert body == {
        "title": "C1000000042 Nordic Marine AB",
        "value": 1234.5,
        "currency": "SEK",
        "org_id": 501,
        "pipeline_id": 7,
        "status": "open",
        "stage_id": 71,
        "custom_fields": {
            "deal-ifs_order_no": "C1000000042",
            "deal-order_status": "Released",
            "deal-cost_center": "CC-4100",
            "deal-profit_center": "PC-100",
            "deal-region": "EU-NORTH",
        },
    }


def test_delivered_order_is_a_won_deal() -> None:
    body = map_order(tenant(), {**ORDER, "Objstate": "Delivered"}, LAYOUT, 501)
    assert body["status"] == "won" and body["stage_id"] == 76


def test_title_placeholders_that_are_missing_render_empty_and_fall_back_to_the_number() -> None:
    configured = tenant(order_mapping={"title": "{CustomerName} {NoSuchProperty}"})
    assert map_order(configured, ORDER, LAYOUT, 1)["title"] == "Nordic Marine AB"
    assert map_order(configured, {**ORDER, "CustomerName": None}, LAYOUT, 1)["title"] == (
        "C1000000042"
    )


def test_missing_amount_is_zero_and_a_malformed_one_is_a_record_error() -> None:
    assert map_order(tenant(), {**ORDER, "TotalAmount": None}, LAYOUT, 1)["value"] == 0.0
    with pytest.raises(RecordError, match="'TotalAmount' is not a number"):
        map_order(tenant(), {**ORDER, "TotalAmount": "12,5"}, LAYOUT, 1)


def test_state_without_a_rule_in_the_stage_map_is_a_record_error() -> None:
    configured = tenant(stage_map=[{"ifs_state": "Planned", "stage": "Planned"}])
    with pytest.raises(RecordError, match="state 'Released' has no rule"):
        map_order(configured, ORDER, LAYOUT, 1)


def test_order_key_is_read_from_the_mapped_property() -> None:
    configured = tenant(order_mapping={"order_no": "OrderId", "title": "{OrderId}"})
    body = map_order(configured, {**ORDER, "OrderId": "X-1"}, LAYOUT, 1)
    assert body["custom_fields"]["deal-ifs_order_no"] == "X-1" and body["title"] == "X-1"


def test_selected_properties_are_what_the_mapping_reads() -> None:
    assert customer_properties(tenant(customer_mapping={"customer_id": "CustomerNo"})) == (
        "Cf_Cost_Center",
        "Cf_Profit_Center",
        "Cf_Region",
        "Country",
        "CustomerNo",
        "Name",
    )
    names = order_properties(tenant(order_mapping={"title": "{OrderNo}: {ReferenceId}"}))
    assert "ReferenceId" in names and "OrderNo" in names
    assert not any("{" in name for name in names)
    assert set(names) >= {"CustomerNo", "TotalAmount", "CurrencyCode", "Objstate", "RegionCode"}


def test_changed_fields_patches_only_the_difference() -> None:
    previous = {"name": "A", "custom_fields": {"k1": "x", "k2": "y"}}
    assert changed_fields(None, previous) == previous
    assert changed_fields(previous, previous) == {}
    current = {"name": "B", "custom_fields": {"k1": "x", "k2": "z", "k3": None}}
    assert changed_fields(previous, current) == {
        "name": "B",
        "custom_fields": {"k2": "z", "k3": None},
    }


ORDER_EXTRA = {
    "terms": {
        "property": "DeliveryTerms",
        "field": "Delivery terms",
        "type": "enum",
        "options": {"EXW": "Ex works", "DAP": "Delivered"},
    },
    "wanted": {"property": "WantedDeliveryDate", "field": "Wanted", "type": "date"},
    "prepayment": {"property": "Prepayment", "field": "Prepayment", "type": "monetary"},
    "lead": {"property": "DeliveryLeadtime", "field": "Lead days", "type": "number"},
    "po": {"property": "CustomerPoNo", "field": "Customer PO", "type": "text"},
}
EXTRA_LAYOUT = PipedriveLayout(
    organization_fields={
        **LAYOUT.organization_fields,
        "extra.budget": "org-budget",
    },
    deal_fields={**LAYOUT.deal_fields, **{f"extra.{name}": f"deal-{name}" for name in ORDER_EXTRA}},
    pipeline_id=7,
    stage_ids=LAYOUT.stage_ids,
    deal_options={"extra.terms": {"Ex works": 501, "Delivered": 502}},
)


def test_extra_order_fields_are_written_in_their_pipedrive_types() -> None:
    config = tenant(order_mapping={"extra": ORDER_EXTRA})
    data = {
        **ORDER,
        "DeliveryTerms": "DAP",
        "WantedDeliveryDate": "2025-10-21T00:00:00Z",
        "Prepayment": "250.5",
        "DeliveryLeadtime": 3,
        "CustomerPoNo": " PO-77 ",
    }

    custom = map_order(config, data, EXTRA_LAYOUT, organization_id=9)["custom_fields"]

    assert custom["deal-terms"] == 502  # the option id, as v2 takes an enum
    assert custom["deal-wanted"] == "2025-10-21"
    assert custom["deal-prepayment"] == {"value": 250.5, "currency": "SEK"}  # the order's
    assert custom["deal-lead"] == 3.0
    assert custom["deal-po"] == "PO-77"
    assert custom["deal-region"] == "EU-NORTH"  # the built-in fields are still there
    assert {"DeliveryTerms", "WantedDeliveryDate", "Prepayment"} <= set(order_properties(config))


def test_empty_extra_values_clear_the_field_and_bad_ones_fail_the_record() -> None:
    config = tenant(order_mapping={"extra": ORDER_EXTRA})
    custom = map_order(config, ORDER, EXTRA_LAYOUT, organization_id=9)["custom_fields"]
    assert all(custom[f"deal-{name}"] is None for name in ORDER_EXTRA)

    with pytest.raises(RecordError) as unmapped:
        map_order(config, {**ORDER, "DeliveryTerms": "CIF"}, EXTRA_LAYOUT, organization_id=9)
    message = str(unmapped.value)
    assert "IFS order C1000000042: DeliveryTerms is 'CIF'" in message
    assert "order_mapping.extra.terms.options does not map" in message
    assert "add CIF: <option label>" in message
    with pytest.raises(RecordError, match="'WantedDeliveryDate' is not a date"):
        map_order(config, {**ORDER, "WantedDeliveryDate": "soon"}, EXTRA_LAYOUT, organization_id=9)
    with pytest.raises(RecordError, match="'DeliveryLeadtime' is not a number"):
        map_order(config, {**ORDER, "DeliveryLeadtime": "x"}, EXTRA_LAYOUT, organization_id=9)


def test_an_organization_monetary_extra_field_uses_its_configured_currency() -> None:
    budget = {"property": "Cf_Budget", "field": "Budget", "type": "monetary", "currency": "EUR"}
    config = tenant(customer_mapping={"extra": {"budget": budget}})

    body = map_customer(config, {**CUSTOMER, "Cf_Budget": 1000}, EXTRA_LAYOUT)

    assert body["custom_fields"]["org-budget"] == {"value": 1000.0, "currency": "EUR"}
    assert "Cf_Budget" in customer_properties(config)
