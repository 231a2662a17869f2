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
