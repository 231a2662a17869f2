"""Simulator responses match the official Pipedrive OpenAPI documents."""

from __future__ import annotations

import json

import pytest
import requests
from openapi_core.testing import MockRequest, MockResponse


def test_a_broad_sample_of_responses_matches_the_official_schemas(pipedrive_sim, spec_checker):
    sim = pipedrive_sim
    check = spec_checker.check
    org_field = check(
        sim.api("POST", "/v1/organizationFields", json={"name": "IFS id", "field_type": "varchar"})
    )["data"]
    check(
        sim.api(
            "POST",
            "/api/v1/dealFields",
            json={"name": "State", "field_type": "enum", "options": [{"label": "Released"}]},
        )
    )
    typed = {
        field_type: check(
            sim.api("POST", "/v1/dealFields", json={"name": field_type, "field_type": field_type})
        )["data"]["key"]
        for field_type in ("monetary", "date", "double")
    }
    check(
        sim.api(
            "POST",
            "/api/v2/deals",
            json={
                "title": "Typed",
                "custom_fields": {
                    typed["monetary"]: {"value": 99.5, "currency": "EUR"},
                    typed["date"]: "2026-03-02",
                    typed["double"]: 3,
                },
            },
        )
    )
    check(sim.api("GET", "/v1/dealFields"))
    check(sim.api("GET", "/api/v1/organizationFields"))
    org = check(
        sim.api(
            "POST",
            "/api/v2/organizations",
            json={
                "name": "Acme AB",
                "address": {"value": "Storgatan 1, Lund", "country": "Sweden"},
                "custom_fields": {org_field["key"]: "C-1001"},
            },
        )
    )["data"]
    check(sim.api("PATCH", f"/api/v2/organizations/{org['id']}", json={"name": "Acme Sweden AB"}))
    check(sim.api("GET", f"/api/v2/organizations/{org['id']}"))
    check(sim.api("GET", "/api/v2/organizations", params={"limit": 1}))
    check(
        sim.api(
            "GET",
            "/api/v2/organizations/search",
            params={"term": "C-1001", "fields": "custom_fields", "exact_match": "true"},
        )
    )
    deal = check(
        sim.api(
            "POST",
            "/api/v2/deals",
            json={"title": "Order 7", "value": 1200.5, "currency": "SEK", "org_id": org["id"]},
        )
    )["data"]
    check(sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"status": "won"}))
    check(sim.api("GET", "/api/v2/deals", params={"sort_by": "update_time"}))
    check(sim.api("GET", "/api/v2/deals/search", params={"term": "Order", "limit": 5}))
    check(sim.api("DELETE", f"/api/v2/deals/{deal['id']}"))
    pipeline = check(sim.api("POST", "/api/v2/pipelines", json={"name": "IFS orders"}))["data"]
    stage = check(
        sim.api("POST", "/api/v2/stages", json={"name": "Released", "pipeline_id": pipeline["id"]})
    )["data"]
    check(sim.api("GET", "/api/v2/pipelines"))
    check(sim.api("GET", f"/api/v2/pipelines/{pipeline['id']}"))
    check(sim.api("GET", "/api/v2/stages", params={"pipeline_id": pipeline["id"]}))
    check(sim.api("GET", f"/api/v2/stages/{stage['id']}"))
    hook = check(
        sim.api(
            "POST",
            "/v1/webhooks",
            json={
                "name": "ml-connector",
                "subscription_url": "http://127.0.0.1:9/hook",
                "event_action": "*",
                "event_object": "deal",
                "http_auth_user": "u",
                "http_auth_password": "p",
                "version": "2.0",
            },
        )
    )["data"]
    check(sim.api("POST", "/v1/webhooks", json={"subscription_url": "not a url"}))
    check(sim.api("GET", "/v1/webhooks"))
    check(sim.api("GET", "/v1/webhooks", headers={"x-api-token": "wrong"}))
    check(sim.api("DELETE", f"/v1/webhooks/{hook['id']}"))
    check(sim.api("DELETE", f"/v1/webhooks/{hook['id']}"))
    check(sim.api("GET", "/v1/users/me"))


def test_lifecycle_responses_match_the_official_schemas(pipedrive_sim, spec_checker):
    """Deletes, merges, archives and hidden webhook credentials, as the documents describe."""
    sim = pipedrive_sim
    check = spec_checker.check
    orgs = [
        check(sim.api("POST", "/api/v2/organizations", json={"name": name}))["data"]["id"]
        for name in ("Acme (dup)", "Acme AB", "Gone AB")
    ]
    deals = [
        check(
            sim.api("POST", "/api/v2/deals", json={"title": title, "value": 10, "org_id": orgs[0]})
        )["data"]["id"]
        for title in ("Order 1 (dup)", "Order 1", "Order 2", "Order 3")
    ]
    merged_org = check(
        sim.api("PUT", f"/v1/organizations/{orgs[0]}/merge", json={"merge_with_id": orgs[1]})
    )
    assert merged_org == {"success": True, "data": {"id": orgs[1]}}
    merged_deal = check(
        sim.api("PUT", f"/v1/deals/{deals[0]}/merge", json={"merge_with_id": deals[1]})
    )["data"]
    assert (merged_deal["id"], merged_deal["merge_what_id"]) == (deals[1], deals[0])
    archived = check(sim.api("PATCH", f"/api/v2/deals/{deals[2]}", json={"is_archived": True}))[
        "data"
    ]
    assert archived["is_archived"] is True
    check(sim.api("GET", f"/api/v2/deals/{deals[2]}"))
    check(sim.api("GET", "/api/v2/deals/archived", params={"limit": 1}))
    check(sim.api("GET", "/api/v2/deals", params={"status": "deleted"}))
    check(sim.api("DELETE", f"/api/v2/deals/{deals[3]}"))
    check(sim.api("DELETE", f"/api/v2/organizations/{orgs[2]}"))
    for path in (
        f"/api/v2/deals/{deals[0]}",
        f"/api/v2/deals/{deals[3]}",
        f"/api/v2/organizations/{orgs[0]}",
        f"/api/v2/organizations/{orgs[2]}",
    ):
        for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
            response = sim.api(method, path, json=body)
            assert response.status_code == 404
            check(response)
    sim.api(
        "POST",
        "/v1/webhooks",
        json={
            "name": "ml-connector",
            "subscription_url": "http://127.0.0.1:9/hook",
            "event_action": "delete",
            "event_object": "*",
            "http_auth_user": "u",
            "http_auth_password": "p",
        },
    )
    sim.settings.hide_webhook_credentials = True
    [hook] = check(sim.api("GET", "/v1/webhooks"))["data"]
    assert (hook["http_auth_user"], hook["http_auth_password"]) == (None, None)


def test_the_schema_check_rejects_a_deal_whose_value_is_a_string(spec_checker):
    body = {"success": True, "data": {"id": 1, "title": "x", "value": "12.00"}}
    request = MockRequest("https://api.pipedrive.com", "get", "/api/v2/deals/1")
    response = MockResponse(json.dumps(body).encode(), status_code=200)
    with pytest.raises(Exception, match="not valid"):
        spec_checker.apis["v2"].validate_response(request, response)


def test_list_ends_with_a_null_cursor(pipedrive_sim):
    response = requests.get(
        f"{pipedrive_sim.url}/api/v2/deals", headers=pipedrive_sim.headers, timeout=5
    )
    assert response.json() == {
        "success": True,
        "data": [],
        "additional_data": {"next_cursor": None},
    }
