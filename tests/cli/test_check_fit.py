"""`ml-connector check`'s fit report against both simulators over HTTP: a misfitting tenant
is refused with every misfit named and its fix, the corrected tenant passes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from connector.tenants import DEFAULT_STAGE_MAP
from sandbox.stack import Stack
from sandbox.tenant import merge, store_credentials
from tests.fixtures.tenants import EXTRA_ORDER_FIELDS

pytestmark = pytest.mark.integration


def _stage_map(**actions: dict[str, Any]) -> list[dict[str, Any]]:
    """The default stage map with the `to_ifs` of some states replaced."""
    rules = []
    for rule in DEFAULT_STAGE_MAP:
        body = rule.model_dump(exclude_none=True)
        if rule.ifs_state in actions:
            body["to_ifs"] = actions[rule.ifs_state]
        rules.append(body)
    return rules


MISFIT = {
    "order_mapping": {"region": "Region_Code"},  # CustomerOrder has RegionCode
    "stage_map": _stage_map(
        Released={"action": "Relase"},  # misspelled Release
        Cancelled={"action": "CancelOrder"},  # CancelReason is required
    ),
}
CORRECTED = {
    "order_mapping": {
        "region": "RegionCode",
        "extra": EXTRA_ORDER_FIELDS,
    },
    "fields": {"region": "IFS region"},
    "stage_map": _stage_map(
        Released={"action": "Release"},
        Cancelled={"action": "CancelOrder", "parameters": {"CancelReason": "CRM"}},
    ),
}


def _seed_enum_region(stack: Stack) -> None:
    stack.pipedrive.seed(
        {
            "organization_fields": [
                {"name": "Region", "field_type": "enum", "options": [{"label": "EMEA"}]}
            ]
        }
    )


def _check(stack: Stack, *extra: str) -> tuple[int, str]:
    result = stack.cli("check", stack.tenant, *extra, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def _errors(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["subject"]: f for f in report["fit"]["findings"] if f["level"] == "error"}


def test_a_misfitting_tenant_is_refused_naming_each_misfit_with_its_fix(stack_factory) -> None:
    stack = stack_factory(tenant_overrides=MISFIT)
    stack.ifs.seed(customers=1, orders=1, seed=3)
    _seed_enum_region(stack)
    writes_before = stack.pipedrive.stats()["writes"]

    code, out = _check(stack, "--json")

    assert code == 1, out
    report = json.loads(out)
    assert all(system["ok"] for system in report["systems"]), report  # both systems answer
    errors = _errors(report)
    assert set(errors) == {
        "order_mapping.region",
        "stage_map[Released].to_ifs.action",
        "stage_map[Cancelled].to_ifs.parameters",
        "fields.region",
    }, errors
    region = errors["order_mapping.region"]
    assert "no property 'Region_Code'" in region["message"]
    assert region["fix"] == "did you mean 'RegionCode'? set order_mapping.region: RegionCode"
    action = errors["stage_map[Released].to_ifs.action"]
    assert "CustomerOrder_Relase" in action["message"]
    assert "set stage_map[Released].to_ifs.action: Release" in action["fix"]
    cancel = errors["stage_map[Cancelled].to_ifs.parameters"]
    assert "CustomerOrder_CancelOrder requires parameter CancelReason" in cancel["message"]
    assert "parameters: {CancelReason: …}" in cancel["fix"]
    field = errors["fields.region"]
    assert field["system"] == "pipedrive"
    assert "organization field 'Region' of type enum" in field["message"]
    assert "fields: {region: IFS Region}" in field["fix"]
    # The unmapped custom attribute is proposed; nothing was written anywhere.
    infos = [f["message"] for f in report["fit"]["findings"] if f["level"] == "info"]
    assert any("Cf_Crm_Stage" in message for message in infos), infos
    assert stack.ifs.stats()["writes"] == 0
    assert stack.pipedrive.stats()["writes"] == writes_before

    code, text = _check(stack)
    assert code == 1
    assert "ERROR order_mapping.region: CustomerOrder has no property 'Region_Code'" in text
    assert "fix: did you mean 'RegionCode'?" in text
    assert "does not fit: 4 problem(s) above" in text


def test_the_corrected_tenant_fits(stack_factory) -> None:
    stack = stack_factory(tenant_overrides=CORRECTED)
    stack.ifs.seed(customers=1, orders=1, seed=3)
    _seed_enum_region(stack)

    code, out = _check(stack, "--json")

    report = json.loads(out)
    assert code == 0, _errors(report)
    assert report["ok"] and report["fit"]["ok"]
    subjects = {f["subject"] for f in report["fit"]["findings"]}
    assert {"order_mapping.status", "pipedrive.burst_limit", "pipedrive.pipeline"} <= subjects
    state = next(f for f in report["fit"]["findings"] if f["subject"] == "order_mapping.status")
    assert "IfsApp.CustomerOrderHandling.CustomerOrderState" in state["message"]
    messages = {f["subject"]: f["message"] for f in report["fit"]["findings"]}
    assert messages["order_mapping.extra.delivery_terms"] == (
        "deal field 'Delivery terms' will be created (enum with options Ex works, "
        "Delivered at place)"
    )
    assert "(monetary)" in messages["order_mapping.extra.prepayment"]


def test_burst_limits_above_the_plan_are_refused(stack_factory) -> None:
    # A 20/2 s plan whose search answers report their own 10/2 s limit; the tenant
    # configures 100 (and, from the test limits, 1000 searches).
    stack = stack_factory(
        pipedrive_settings={"api_token_burst": 20, "search_burst": 10, "burst_window_s": 2.0},
        tenant_overrides={"pipedrive": {"burst_limit": 100}},
    )

    code, out = _check(stack, "--json")

    assert code == 1
    errors = _errors(json.loads(out))
    assert set(errors) == {"pipedrive.burst_limit", "pipedrive.search_burst_limit"}, errors
    burst = errors["pipedrive.burst_limit"]
    assert "100 is above the plan's 20 requests per 2 s" in burst["message"]
    assert "429" in burst["message"] and "403" in burst["message"]
    assert burst["fix"] == "set pipedrive.burst_limit: 20 (or lower)"
    search = errors["pipedrive.search_burst_limit"]
    says = "1000 is above the 10 searches per 2 s Pipedrive reports for search"
    assert says in search["message"]
    assert search["fix"] == "set pipedrive.search_burst_limit: 10 (or lower)"

    stack.write_tenants(pipedrive={"burst_limit": 20, "search_burst_limit": 10})
    code, out = _check(stack, "--json")
    assert code == 0, _errors(json.loads(out))


def test_tenant_validate_remote_runs_the_fit_check_for_every_tenant(stack_factory) -> None:
    stack = stack_factory(tenant_overrides=CORRECTED)
    _seed_enum_region(stack)
    # A second tenant of the same installation whose configuration does not fit.
    misfit = f"{stack.tenant}-b"
    document = yaml.safe_load(stack.tenants_file.read_text())
    document["tenants"][misfit] = merge(stack.tenant_config, MISFIT)
    stack.tenants_file.write_text(yaml.safe_dump(document, sort_keys=False))
    store_credentials(stack.runtime.vault, misfit, stack.simulators)

    result = stack.cli("tenant", "validate", "--remote", "--json", timeout=180)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"] == []
    fits, misfits = report["tenants"][stack.tenant], report["tenants"][misfit]
    assert fits["ok"] is True and fits["fit"]["ok"] is True
    assert misfits["ok"] is False
    assert {
        "order_mapping.region",
        "stage_map[Released].to_ifs.action",
        "stage_map[Cancelled].to_ifs.parameters",
    } == set(_errors(misfits))  # its fields are the corrected ones

    text = stack.cli("tenant", "validate", "--remote", timeout=180)
    assert text.returncode == 1
    assert f"{stack.tenant}: fits" in text.stdout
    assert f"{misfit}: does not fit" in text.stdout
    assert "stage_map[Released].to_ifs.action" in text.stdout

    document["tenants"][misfit] = merge(stack.tenant_config, CORRECTED)
    stack.tenants_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = stack.cli("tenant", "validate", "--remote", "--json", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True
