"""Behaviour of the simulated v1/v2 API: paging, filters, search, fields, errors."""

from __future__ import annotations

import re

import requests

from simulators.pipedrive.records import render_v1


def _org(sim, name, **extra):
    response = sim.api("POST", "/api/v2/organizations", json={"name": name, **extra})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_cursor_paging_visits_every_record_once_and_ends_with_null(pipedrive_sim):
    for number in range(7):
        _org(pipedrive_sim, f"Org {number}")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = pipedrive_sim.api("GET", "/api/v2/organizations", params=params).json()
        seen += [org["id"] for org in body["data"]]
        pages += 1
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(1, 8))
    assert pages == 3


def test_descending_paging_by_id(pipedrive_sim):
    for number in range(4):
        _org(pipedrive_sim, f"Org {number}")
    params = {"limit": 2, "sort_by": "id", "sort_direction": "desc"}
    first = pipedrive_sim.api("GET", "/api/v2/organizations", params=params).json()
    cursor = first["additional_data"]["next_cursor"]
    second = pipedrive_sim.api(
        "GET", "/api/v2/organizations", params={**params, "cursor": cursor}
    ).json()
    assert [o["id"] for o in first["data"] + second["data"]] == [4, 3, 2, 1]


def test_limit_above_500_is_a_400(pipedrive_sim):
    response = pipedrive_sim.api("GET", "/api/v2/deals", params={"limit": 501})
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert pipedrive_sim.api("GET", "/api/v2/deals", params={"limit": 500}).status_code == 200


def test_updated_since_returns_only_later_changes(pipedrive_sim):
    old = _org(pipedrive_sim, "Old")
    pipedrive_sim.state.records["organization"][old["id"]]["update_time"] = "2020-01-01T00:00:00Z"
    new = _org(pipedrive_sim, "New")
    body = pipedrive_sim.api(
        "GET", "/api/v2/organizations", params={"updated_since": "2024-01-01T00:00:00Z"}
    ).json()
    assert [o["id"] for o in body["data"]] == [new["id"]]


def test_custom_field_creation_gives_40_hex_keys_and_enum_option_ids(pipedrive_sim):
    text = pipedrive_sim.api(
        "POST", "/v1/dealFields", json={"name": "Order no", "field_type": "varchar"}
    ).json()["data"]
    enum = pipedrive_sim.api(
        "POST",
        "/v1/dealFields",
        json={"name": "Status", "field_type": "enum", "options": [{"label": "A"}, {"label": "B"}]},
    ).json()["data"]
    assert re.fullmatch(r"[0-9a-f]{40}", text["key"])
    assert re.fullmatch(r"[0-9a-f]{40}", enum["key"]) and enum["key"] != text["key"]
    assert [o["label"] for o in enum["options"]] == ["A", "B"]
    assert all(isinstance(o["id"], int) for o in enum["options"])
    listed = pipedrive_sim.api("GET", "/v1/dealFields").json()["data"]
    keys = {f["key"] for f in listed}
    assert {"title", "value", text["key"], enum["key"]} <= keys
    bad = pipedrive_sim.api("POST", "/v1/dealFields", json={"name": "x", "field_type": "nope"})
    assert bad.status_code == 400


def test_custom_field_values_are_validated_and_filtered_by_the_custom_fields_param(pipedrive_sim):
    order_no = pipedrive_sim.api(
        "POST", "/v1/dealFields", json={"name": "Order no", "field_type": "varchar"}
    ).json()["data"]
    status = pipedrive_sim.api(
        "POST",
        "/v1/dealFields",
        json={"name": "Status", "field_type": "enum", "options": [{"label": "Released"}]},
    ).json()["data"]
    option = status["options"][0]["id"]
    created = pipedrive_sim.api(
        "POST",
        "/api/v2/deals",
        json={"title": "D", "custom_fields": {order_no["key"]: "CO-1", status["key"]: option}},
    )
    assert created.status_code == 200
    deal_id = created.json()["data"]["id"]
    only = pipedrive_sim.api(
        "GET", f"/api/v2/deals/{deal_id}", params={"custom_fields": order_no["key"]}
    ).json()["data"]
    assert only["custom_fields"] == {order_no["key"]: "CO-1"}
    wrong_option = pipedrive_sim.api(
        "PATCH", f"/api/v2/deals/{deal_id}", json={"custom_fields": {status["key"]: option + 99}}
    )
    assert wrong_option.status_code == 400
    unknown = pipedrive_sim.api(
        "PATCH", f"/api/v2/deals/{deal_id}", json={"custom_fields": {"f" * 40: "x"}}
    )
    assert unknown.status_code == 400


def test_monetary_and_date_custom_fields_take_the_v2_shapes(pipedrive_sim):
    def field(name: str, field_type: str) -> str:
        return str(
            pipedrive_sim.api(
                "POST", "/v1/dealFields", json={"name": name, "field_type": field_type}
            ).json()["data"]["key"]
        )

    amount, wanted = field("Prepayment", "monetary"), field("Wanted", "date")
    good = {amount: {"value": 250.5, "currency": "EUR"}, wanted: "2026-03-02"}
    created = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "D", "custom_fields": good})
    assert created.status_code == 200
    deal_id = created.json()["data"]["id"]
    read = pipedrive_sim.api("GET", f"/api/v2/deals/{deal_id}").json()["data"]["custom_fields"]
    assert read[amount] == {"value": 250.5, "currency": "EUR"} and read[wanted] == "2026-03-02"
    # A monetary field is its two subfields (value, currency); a date is YYYY-MM-DD.
    for refused in (
        {amount: 250.5},
        {amount: {"value": "250", "currency": "EUR"}},
        {amount: {"value": 250}},
        {wanted: "02.03.2026"},
        {wanted: "2026-03-02T00:00:00Z"},
    ):
        answer = pipedrive_sim.api(
            "PATCH", f"/api/v2/deals/{deal_id}", json={"custom_fields": refused}
        )
        assert answer.status_code == 400, refused


def test_search_finds_an_org_by_exact_custom_field_value(pipedrive_sim):
    key = pipedrive_sim.api(
        "POST", "/v1/organizationFields", json={"name": "IFS id", "field_type": "varchar"}
    ).json()["data"]["key"]
    _org(pipedrive_sim, "Acme", custom_fields={key: "C1001"})
    target = _org(pipedrive_sim, "Beta", custom_fields={key: "C100"})
    params = {"term": "C100", "fields": "custom_fields", "exact_match": "true"}
    body = pipedrive_sim.api("GET", "/api/v2/organizations/search", params=params).json()
    items = body["data"]["items"]
    assert [i["item"]["id"] for i in items] == [target["id"]]
    assert items[0]["item"]["custom_fields"] == ["C100"]
    fuzzy = pipedrive_sim.api(
        "GET", "/api/v2/organizations/search", params={"term": "C100", "fields": "custom_fields"}
    ).json()["data"]["items"]
    assert len(fuzzy) == 2


def test_search_finds_a_deal_by_order_number_and_short_terms_need_exact_match(pipedrive_sim):
    key = pipedrive_sim.api(
        "POST", "/v1/dealFields", json={"name": "Order no", "field_type": "varchar"}
    ).json()["data"]["key"]
    deal = pipedrive_sim.api(
        "POST", "/api/v2/deals", json={"title": "Order", "custom_fields": {key: "7"}}
    ).json()["data"]
    short = pipedrive_sim.api("GET", "/api/v2/deals/search", params={"term": "7"})
    assert short.status_code == 400
    exact = pipedrive_sim.api(
        "GET",
        "/api/v2/deals/search",
        params={"term": "7", "fields": "custom_fields", "exact_match": "true"},
    ).json()["data"]["items"]
    assert [i["item"]["id"] for i in exact] == [deal["id"]]


def test_bad_or_missing_token_is_401_and_query_token_works(pipedrive_sim):
    url = f"{pipedrive_sim.url}/api/v2/deals"
    for headers in ({}, {"x-api-token": "nope"}, {"Authorization": "Bearer nope"}):
        response = requests.get(url, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["success"] is False
        assert response.json()["errorCode"] == 401
    ok = requests.get(url, params={"api_token": pipedrive_sim.api_token}, timeout=5)
    assert ok.status_code == 200


def test_revoked_api_token_is_refused(pipedrive_sim):
    pipedrive_sim.control("api-tokens/revoke", {"token": pipedrive_sim.api_token})
    assert pipedrive_sim.api("GET", "/v1/users/me").status_code == 401


def test_unknown_ids_are_404_and_deleted_deals_disappear(pipedrive_sim):
    assert pipedrive_sim.api("GET", "/api/v2/deals/999").status_code == 404
    assert pipedrive_sim.api("PATCH", "/api/v2/organizations/999", json={}).status_code == 404
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "x"}).json()["data"]
    assert pipedrive_sim.api("DELETE", f"/api/v2/deals/{deal['id']}").json() == {
        "success": True,
        "data": {"id": deal["id"]},
    }
    assert pipedrive_sim.api("GET", f"/api/v2/deals/{deal['id']}").status_code == 404
    deleted = pipedrive_sim.api("GET", "/api/v2/deals", params={"status": "deleted"}).json()
    assert [d["id"] for d in deleted["data"]] == [deal["id"]]


def test_deal_status_and_stage_changes(pipedrive_sim):
    stages = pipedrive_sim.api("GET", "/api/v2/stages").json()["data"]
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "x", "value": 10}).json()[
        "data"
    ]
    assert deal["stage_id"] == stages[0]["id"] and deal["status"] == "open"
    assert isinstance(deal["value"], int)
    won = pipedrive_sim.api(
        "PATCH", f"/api/v2/deals/{deal['id']}", json={"status": "won", "stage_id": stages[2]["id"]}
    ).json()["data"]
    assert won["status"] == "won" and won["won_time"].endswith("Z")
    assert won["stage_id"] == stages[2]["id"] and "stage_change_time" in won
    assert (
        pipedrive_sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"value": "12"}).status_code
        == 400
    )


def test_both_v1_prefixes_and_users_me(pipedrive_sim):
    for prefix in ("/v1", "/api/v1"):
        me = pipedrive_sim.api("GET", f"{prefix}/users/me").json()["data"]
        assert me["id"] == pipedrive_sim.settings.integration_user_id
        assert me["company_id"] == pipedrive_sim.settings.company_id


def test_control_endpoints_seed_dump_and_count_writes(pipedrive_sim):
    created = pipedrive_sim.control(
        "seed",
        {
            "pipelines": [{"name": "IFS", "stages": ["Released", "Delivered"]}],
            "organization_fields": [{"name": "IFS id", "field_type": "varchar"}],
            "organizations": [{"name": "Seeded"}],
        },
    )
    assert len(created["pipelines"][0]["stages"]) == 2
    assert len(created["organization_fields"][0]["key"]) == 40
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Via API"})
    dumped = pipedrive_sim.control("organizations")
    assert [o["name"] for o in dumped] == ["Seeded", "Via API"]
    stats = pipedrive_sim.control("stats")
    assert stats["writes"]["organization"] == {"POST": 1}
    assert stats["requests"]["POST /api/v2/organizations"] == 1
    assert stats["tokens_spent"] == 5


def test_injected_errors_and_latency(pipedrive_sim):
    pipedrive_sim.control("faults", {"error_rate": 1.0, "seed": 1})
    assert pipedrive_sim.api("GET", "/api/v2/deals").status_code == 500
    pipedrive_sim.control("faults", {"error_rate": 0.0, "error_after_write_rate": 1.0})
    lost = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "applied"})
    assert lost.status_code == 500
    assert [d["title"] for d in pipedrive_sim.control("deals")] == ["applied"]
    faults = pipedrive_sim.control("faults", {"error_after_write_rate": 0.0, "latency_ms": 20})
    assert faults["latency_ms"] == 20
    assert pipedrive_sim.api("GET", "/api/v2/deals").status_code == 200
    assert pipedrive_sim.control("stats")["injected_errors_500"] == 2


def test_v1_objects_spread_a_monetary_field_over_value_and_currency_keys():
    record = {
        "id": 1,
        "title": "D",
        "is_deleted": False,
        "custom_fields": {"a" * 40: {"value": 12.5, "currency": "EUR"}, "b" * 40: "x"},
    }

    rendered = render_v1("deal", record)

    assert rendered["a" * 40] == 12.5 and rendered["a" * 40 + "_currency"] == "EUR"
    assert rendered["b" * 40] == "x"
