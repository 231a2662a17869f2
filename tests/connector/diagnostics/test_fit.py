"""The fit rules on the IFS simulator's own `$metadata` documents: patches, parameter values,
keys, types and OAuth scopes (the end-to-end `check` runs are in tests/cli/test_check_fit.py)."""

from __future__ import annotations

from typing import Any

from connector.diagnostics.fit import Finding, ifs_findings, pipedrive_findings
from connector.ifs.metadata import parse_metadata
from connector.tenants import DEFAULT_STAGE_MAP, TenantConfig
from simulators.ifs.metadata import metadata_document

CUSTOMERS = parse_metadata(metadata_document("CustomerHandling"))
ORDERS = parse_metadata(metadata_document("CustomerOrderHandling"))


def _tenant(**overrides: Any) -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "id": "acme",
            "ifs": {"base_url": "https://acme.ifs.example", "namespace": "acme"},
            "pipedrive": {"api_domain": "https://acme.pipedrive.example"},
            **overrides,
        }
    )


def _errors(findings: list[Finding]) -> dict[str, Finding]:
    return {f.subject: f for f in findings if f.level == "error"}


def _with_rule(state: str, to_ifs: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        rule.model_dump(exclude_none=True) | ({"to_ifs": to_ifs} if rule.ifs_state == state else {})
        for rule in DEFAULT_STAGE_MAP
    ]


def test_the_default_tenant_fits_the_simulated_installation() -> None:
    assert _errors(ifs_findings(_tenant(), CUSTOMERS, ORDERS)) == {}


def test_a_patch_of_a_computed_or_unknown_property_is_refused() -> None:
    tenant = _tenant(stage_map=_with_rule("Delivered", {"patch": {"Objstate": "Delivered"}}))
    [refused] = _errors(ifs_findings(tenant, CUSTOMERS, ORDERS)).values()
    assert refused.subject == "stage_map[Delivered].to_ifs.patch"
    assert "Objstate is not updatable" in refused.message

    tenant = _tenant(stage_map=_with_rule("Delivered", {"patch": {"Cf_Crm_Stag": "Won"}}))
    [refused] = _errors(ifs_findings(tenant, CUSTOMERS, ORDERS)).values()
    assert "no property 'Cf_Crm_Stag'" in refused.message and "'Cf_Crm_Stage'" in (
        refused.fix or ""
    )


def test_parameter_values_are_held_against_their_declared_facets() -> None:
    too_long = {"action": "CancelOrder", "parameters": {"CancelReason": "LOST-IN-CRM-TOO"}}
    errors = _errors(
        ifs_findings(_tenant(stage_map=_with_rule("Cancelled", too_long)), None, ORDERS)
    )
    assert "longer than CancelReason allows (Edm.String, max 10)" in (
        errors["stage_map[Cancelled].to_ifs.parameters.CancelReason"].message
    )
    unknown = {"action": "Cancel", "parameters": {"Reason": "CRM"}}
    errors = _errors(
        ifs_findings(_tenant(stage_map=_with_rule("Cancelled", unknown)), None, ORDERS)
    )
    assert "has no parameter 'Reason'" in errors["stage_map[Cancelled].to_ifs.parameters"].message


def test_a_non_numeric_value_and_a_non_key_id_are_refused() -> None:
    tenant = _tenant(
        order_mapping={"value": "CurrencyCode"}, customer_mapping={"customer_id": "Name"}
    )
    errors = _errors(ifs_findings(tenant, CUSTOMERS, ORDERS))
    assert "not a number" in errors["order_mapping.value"].message
    assert "not the key of CustomerInfo" in errors["customer_mapping.customer_id"].message
    assert (
        errors["customer_mapping.customer_id"].fix == "set customer_mapping.customer_id: CustomerId"
    )


def test_an_entity_set_missing_from_metadata_names_the_ones_there() -> None:
    tenant = _tenant(ifs={**_tenant().ifs.model_dump(), "order_entity_set": "CustomerOrders"})
    errors = _errors(ifs_findings(tenant, CUSTOMERS, ORDERS))
    assert "declares no entity set 'CustomerOrders'" in errors["ifs.order_entity_set"].message
    assert errors["ifs.order_entity_set"].fix == "set ifs.order_entity_set: CustomerOrderSet"


def _oauth(scopes: str | None) -> list[Finding]:
    tenant = _tenant(
        pipedrive={
            "api_domain": "https://acme.pipedrive.example",
            "auth": "oauth2",
            "oauth_client_id": "app",
        }
    )
    findings = pipedrive_findings(tenant, {}, [], None, "80", scopes)
    return [f for f in findings if f.subject == "pipedrive.auth"]


def test_oauth_scopes_are_checked_when_known() -> None:
    [granted] = _oauth("base deals:full contacts:full admin")
    assert granted.level == "info"
    [lacking] = _oauth("base deals:read")
    assert lacking.level == "error" and "deals:full, contacts:full, admin" in lacking.message
    [unknown] = _oauth(None)
    assert unknown.level == "warning" and "not known" in unknown.message


EXTRA = {
    "terms": {
        "property": "DeliveryTerms",
        "field": "Delivery terms",
        "type": "enum",
        "options": {"EXW": "Ex works"},
    },
    "wanted": {"property": "WantedDeliveryDate", "field": "Wanted delivery", "type": "date"},
}


def test_extra_properties_are_held_against_metadata() -> None:
    fits = _tenant(order_mapping={"extra": EXTRA})
    findings = ifs_findings(fits, CUSTOMERS, ORDERS)
    assert _errors(findings) == {}
    # A mapped property is no longer proposed as a candidate.
    [proposal] = [f for f in findings if f.subject == "order_mapping" and "Cf_" in f.message]
    assert "Cf_Crm_Stage" in proposal.message

    misfit = _tenant(
        order_mapping={
            "extra": {
                "terms": {**EXTRA["terms"], "property": "DeliveryTerm"},
                "wanted": {**EXTRA["wanted"], "property": "CustomerPoNo"},
                "lead": {"property": "CustomerName", "field": "Lead", "type": "number"},
                "state": {
                    "property": "Objstate",
                    "field": "State",
                    "type": "enum",
                    "options": {"Released": "Go", "Shipped": "Gone"},
                },
            }
        }
    )
    errors = _errors(ifs_findings(misfit, CUSTOMERS, ORDERS))
    assert set(errors) == {
        "order_mapping.extra.terms.property",
        "order_mapping.extra.wanted.property",
        "order_mapping.extra.lead.property",
        "order_mapping.extra.state.options",
    }
    assert errors["order_mapping.extra.terms.property"].fix == (
        "did you mean 'DeliveryTerms'? set order_mapping.extra.terms.property: DeliveryTerms"
    )
    assert "CustomerPoNo is Edm.String, not a date" in (
        errors["order_mapping.extra.wanted.property"].message
    )
    assert "not a number" in errors["order_mapping.extra.lead.property"].message
    state = errors["order_mapping.extra.state.options"]
    assert "Shipped are not values of CustomerOrder.Objstate" in state.message
    assert "Released" in (state.fix or "")


def _field(name: str, field_type: str, *labels: str) -> dict[str, Any]:
    found: dict[str, Any] = {"key": f"k-{name}", "name": name, "field_type": field_type}
    if labels:
        found["options"] = [{"id": i, "label": label} for i, label in enumerate(labels, 1)]
    return found


def _extra_findings(*deal_fields: dict[str, Any]) -> dict[str, Finding]:
    tenant = _tenant(order_mapping={"extra": EXTRA})
    findings = pipedrive_findings(tenant, {"deal": list(deal_fields)}, [], None, "20", None)
    return {f.subject: f for f in findings if ".extra." in f.subject}


def test_extra_pipedrive_fields_are_created_or_adopted_by_type_and_options() -> None:
    created = _extra_findings()
    assert created["order_mapping.extra.terms"].message == (
        "deal field 'Delivery terms' will be created (enum with options Ex works)"
    )
    assert "(date)" in created["order_mapping.extra.wanted"].message

    adopted = _extra_findings(
        _field("Delivery terms", "enum", "Ex works", "FCA"), _field("Wanted delivery", "date")
    )
    assert {f.level for f in adopted.values()} == {"info"}

    refused = _extra_findings(
        _field("Delivery terms", "enum", "FCA"), _field("Wanted delivery", "varchar")
    )
    terms, wanted = refused["order_mapping.extra.terms"], refused["order_mapping.extra.wanted"]
    assert terms.level == wanted.level == "error"
    assert "without the option(s) 'Ex works'" in terms.message
    assert "add the option(s) Ex works to the field in Pipedrive" in (terms.fix or "")
    assert "of type varchar; the connector writes a date there and needs date" in wanted.message
    assert "order_mapping.extra.wanted.field: IFS Wanted delivery" in (wanted.fix or "")


def _search(configured: int, plain: str | None, search: str | None) -> Finding:
    tenant = _tenant(
        pipedrive={"api_domain": "https://x.pipedrive.example", "search_burst_limit": configured}
    )
    findings = pipedrive_findings(tenant, {}, [], None, plain, None, search)
    [found] = [f for f in findings if f.subject == "pipedrive.search_burst_limit"]
    return found


def test_search_burst_limit_is_checked_only_against_a_separately_reported_limit() -> None:
    above = _search(20, "20", "10")
    assert above.level == "error"
    assert "search_burst_limit 20 is above the 10 searches per 2 s" in above.message
    assert above.fix == "set pipedrive.search_burst_limit: 10 (or lower)"
    assert _search(10, "20", "10").level == "info"
    # Same header as a plain read: nothing separate to hold the setting against.
    same = _search(30, "100", "100")
    assert same.level == "warning"
    assert "reports no separate search limit" in same.message
    assert "could not be checked" in same.message and "documents 10 per 2 s" in same.message
    assert _search(8, "20", None).level == "info"
