"""The tenants file: the documented example loads, and each mistake is named precisely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from connector.errors import ConfigError, UnknownTenantError
from connector.tenants import (
    DEFAULT_STAGE_MAP,
    TenantConfig,
    get_tenant,
    load_tenants,
    parse_tenants,
    read_tenants,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "tenants.example.yaml"


def _tenant(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ifs": {"base_url": "https://acme.ifs.example", "namespace": "acme"},
        "pipedrive": {"api_domain": "https://acme.pipedrive.example"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def _problem(tenants: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_tenants({"tenants": tenants}, source="tenants.yaml")
    return str(caught.value)


def test_a_minimal_tenant_gets_the_documented_defaults():
    tenant = parse_tenants({"tenants": {"acme": _tenant()}})["acme"]
    assert tenant.id == "acme"
    assert tenant.schedule == "*/15 * * * *"
    assert tenant.stage_map == DEFAULT_STAGE_MAP
    assert tenant.ifs.effective_token_url == (
        "https://acme.ifs.example/auth/realms/acme/protocol/openid-connect/token"
    )


def test_the_example_file_is_valid_and_its_first_tenant_spells_out_every_default():
    tenants = load_tenants(EXAMPLE)
    assert list(tenants) == ["acme", "globex-nordic"]
    acme = tenants["acme"]
    minimal = TenantConfig.model_validate(
        {
            "id": "acme",
            "ifs": {"base_url": acme.ifs.base_url, "namespace": acme.ifs.namespace},
            "pipedrive": {"api_domain": acme.pipedrive.api_domain},
        }
    )
    assert acme.model_dump(exclude={"name"}) == minimal.model_dump(exclude={"name"})
    assert tenants["globex-nordic"].pipedrive.auth == "oauth2"
    assert tenants["globex-nordic"].webhook.auth == "hmac"


def _missing_keys(model: type[BaseModel], written: dict[str, Any], where: str) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if name == "id":
            continue
        if name not in written:
            missing.append(f"{where}{name}")
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _missing_keys(annotation, written[name], f"{where}{name}.")
    return missing


def test_the_example_file_shows_every_key():
    written = yaml.safe_load(EXAMPLE.read_text())["tenants"]["acme"]
    assert _missing_keys(TenantConfig, written, "") == []


def test_unknown_key_names_tenant_and_key():
    message = _problem({"acme": _tenant(ifs={"base_ur": "https://x.example"})})
    assert "tenants.yaml is invalid" in message
    assert "tenant 'acme': key 'ifs.base_ur': unknown key" in message
    assert "shedule" in _problem({"acme": _tenant(shedule="* * * * *")})


def test_missing_ifs_base_url_is_named():
    body = _tenant()
    del body["ifs"]["base_url"]
    assert "tenant 'acme': key 'ifs.base_url': required key is missing" in _problem({"acme": body})


def test_base_url_without_scheme_says_what_is_expected():
    message = _problem({"acme": _tenant(ifs={"base_url": "acme.ifs.example"})})
    assert "tenant 'acme': key 'ifs.base_url': expected an http(s) URL" in message


@pytest.mark.parametrize(
    ("schedule", "detail"),
    [
        ("*/15 * * *", "expected 5 fields"),
        ("61 * * * *", "minute field: 61 is outside 0-59"),
        ("0 */0 * * *", "hour field: step 0"),
        ("0 9 * * fri-mon", "day of week field: range 'fri-mon' runs backwards"),
    ],
)
def test_bad_cron_string_is_named_with_the_reason(schedule, detail):
    message = _problem({"acme": _tenant(schedule=schedule)})
    assert "tenant 'acme': key 'schedule': expected a 5-field cron string" in message
    assert detail in message


@pytest.mark.parametrize("tenant_id", ["Acme", "acme_corp", "-acme", "acme-", "a" * 64])
def test_tenant_id_must_be_a_slug(tenant_id):
    message = _problem({tenant_id: _tenant()})
    assert f"tenant {tenant_id!r}: the id must be a slug" in message
    assert "lowercase letters, digits, inner hyphens" in message


def test_unknown_ifs_state_in_stage_map_lists_the_known_states():
    message = _problem({"acme": _tenant(stage_map=[{"ifs_state": "Shipped", "stage": "Out"}])})
    assert (
        "tenant 'acme': key 'stage_map.0.ifs_state': 'Shipped' is not an IFS order state; "
        "expected one of Planned, Released" in message
    )
    assert "Blocked" in message


def test_duplicate_ifs_state_in_stage_map_is_named():
    rules = [{"ifs_state": "Released", "stage": "A"}, {"ifs_state": "Released", "stage": "B"}]
    message = _problem({"acme": _tenant(stage_map=rules)})
    assert "tenant 'acme': key 'stage_map': IFS state listed twice: Released" in message


def test_stage_rule_with_both_action_and_patch_is_refused():
    rule = {
        "ifs_state": "Released",
        "stage": "Released",
        "to_ifs": {"action": "Release", "patch": {"Cf_Crm_Stage": "Won"}},
    }
    message = _problem({"acme": _tenant(stage_map=[{"ifs_state": "Planned", "stage": "P"}, rule])})
    assert "tenant 'acme': key 'stage_map.1.to_ifs': give exactly one of action or patch" in message


def test_open_deal_rule_without_stage_is_refused():
    message = _problem({"acme": _tenant(stage_map=[{"ifs_state": "Planned"}])})
    assert "tenant 'acme': key 'stage_map.0': an open deal needs a stage" in message


def test_oauth2_without_client_id_is_refused():
    message = _problem({"acme": _tenant(pipedrive={"auth": "oauth2"})})
    assert "tenant 'acme': key 'pipedrive'" in message
    assert "auth: oauth2 needs oauth_client_id" in message


def test_every_problem_of_every_tenant_is_reported_at_once():
    message = _problem({"acme": _tenant(schedule="never"), "globex": _tenant(ifs={"page_size": 0})})
    assert "tenant 'acme': key 'schedule'" in message
    assert "tenant 'globex': key 'ifs.page_size'" in message


def test_file_level_mistakes(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist .*CONNECTOR_TENANTS_FILE"):
        load_tenants(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants:\n  acme: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tenants(broken)
    flat = tmp_path / "flat.yaml"
    flat.write_text("acme:\n  ifs: {}\n")
    with pytest.raises(ConfigError, match="expected a mapping with a 'tenants:' mapping"):
        load_tenants(flat)


def test_unknown_tenant_lists_the_known_ones():
    tenants = parse_tenants({"tenants": {"acme": _tenant(), "globex": _tenant()}})
    with pytest.raises(UnknownTenantError, match=r"unknown tenant 'initech' .*acme, globex"):
        get_tenant(tenants, "initech")


def test_a_typo_in_one_tenant_keeps_the_other_tenants_and_names_the_broken_one(tmp_path):
    path = tmp_path / "tenants.yaml"
    broken = _tenant()
    broken["schedul"] = "*/5 * * * *"
    path.write_text(yaml.safe_dump({"tenants": {"acme": _tenant(), "globex": broken}}))
    reading = read_tenants(path)
    assert list(reading.tenants) == ["acme"]
    assert not reading.ok
    assert list(reading.problems) == ["globex"]
    (message,) = reading.messages()
    assert message.startswith("tenant 'globex': key 'schedul': unknown key")
    assert "did you mean 'schedule'?" in message and "expected one of:" in message
    with pytest.raises(ConfigError, match="schedul"):
        load_tenants(path)


def test_the_reading_carries_a_digest_that_changes_with_the_file(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": {"acme": _tenant()}}))
    first = read_tenants(path)
    assert first.ok and len(first.digest) == 64
    assert read_tenants(path).digest == first.digest
    path.write_text(yaml.safe_dump({"tenants": {"acme": _tenant(schedule="0 * * * *")}}))
    assert read_tenants(path).digest != first.digest


def _extra(where: str = "order_mapping", **fields: Any) -> dict[str, Any]:
    extra = {"property": "DeliveryTerms", "field": "Delivery terms", "type": "text", **fields}
    return {"acme": _tenant(**{where: {"extra": {"terms": extra}}})}


def test_extra_fields_validate_with_errors_naming_tenant_and_key():
    ok = parse_tenants(
        {"tenants": _extra(type="enum", options={"EXW": "Ex works", "DAP": "Delivered"})}
    )
    assert ok["acme"].order_mapping.extra["terms"].labels() == ("Ex works", "Delivered")
    assert parse_tenants({"tenants": _extra(type="monetary")})["acme"]  # the order's currency

    assert "tenant 'acme': key 'order_mapping.extra.terms': an enum needs options" in _problem(
        _extra(type="enum")
    )
    assert "options belong to an enum, not to a text field" in _problem(
        _extra(options={"EXW": "Ex works"})
    )
    assert "key 'order_mapping.extra.terms.type': Input should be 'text', 'number'" in _problem(
        _extra(type="string")
    )
    unknown = _problem(_extra(propery="X"))
    assert "key 'order_mapping.extra.terms.propery': unknown key (did you mean 'property'?)" in (
        unknown
    )
    assert "'eur' is not an ISO currency code" in _problem(_extra(type="monetary", currency="eur"))
    assert (
        "tenant 'acme': customer_mapping.extra.terms: a monetary field of an organization "
        "needs currency" in _problem(_extra("customer_mapping", type="monetary"))
    )
    clash = _problem(_extra(field="IFS order status"))
    assert "order_mapping.extra.terms.field 'IFS order status' is already the name of " in clash
    assert "fields.order_status" in clash
    bad_name = {
        "acme": _tenant(order_mapping={"extra": {"Terms!": {"property": "A", "field": "B"}}})
    }
    assert "key 'order_mapping.extra': extra field name(s) 'Terms!'" in _problem(bad_name)


def test_on_ifs_missing_is_ignore_by_default_and_only_ignore_or_close():
    lifecycle = parse_tenants({"tenants": {"acme": _tenant()}})["acme"].lifecycle
    assert (lifecycle.on_ifs_missing, lifecycle.ifs_missing_lost_reason) == (
        "ignore",
        "Removed from IFS",
    )
    message = _problem({"acme": _tenant(lifecycle={"on_ifs_missing": "delete"})})
    assert "tenant 'acme': key 'lifecycle.on_ifs_missing'" in message and "'close'" in message
    assert "lifecycle.ifs_missing_lost_reason" in _problem(
        {"acme": _tenant(lifecycle={"ifs_missing_lost_reason": ""})}
    )
