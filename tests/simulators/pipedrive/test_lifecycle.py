"""What sales users do to records: deletes, merges and archives, plus the search-index lag."""

from __future__ import annotations

import time

import requests

ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."


def _not_found(entity: str) -> dict:
    return {
        "success": False,
        "error": f"{entity} not found",
        "error_info": ERROR_INFO,
        "data": None,
        "additional_data": None,
    }


def _create(sim, plural: str, body: dict) -> dict:
    response = sim.api("POST", f"/api/v2/{plural}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _ids(response: requests.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [record["id"] for record in response.json()["data"]]


def test_a_deal_deleted_by_a_user_is_404_on_get_patch_and_delete(pipedrive_sim):
    sim = pipedrive_sim
    deal = _create(sim, "deals", {"title": "Order 1"})
    assert sim.control(f"deals/{deal['id']}/delete", {}) == {"id": deal["id"]}
    for method, body in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
        response = sim.api(method, f"/api/v2/deals/{deal['id']}", json=body)
        assert response.status_code == 404
        assert response.json() == _not_found("Deal")
    assert _ids(sim.api("GET", "/api/v2/deals")) == []
    deleted = sim.api("GET", "/api/v2/deals", params={"status": "deleted"}).json()["data"]
    assert [(d["id"], d["status"], d["is_deleted"]) for d in deleted] == [
        (deal["id"], "deleted", True)
    ]


def test_a_deleted_organization_is_404_and_never_listed(pipedrive_sim):
    sim = pipedrive_sim
    kept = _create(sim, "organizations", {"name": "Kept AB"})
    gone = _create(sim, "organizations", {"name": "Gone AB"})
    sim.control(f"organizations/{gone['id']}/delete", {})
    for method, body in (("GET", None), ("PATCH", {"name": "x"})):
        response = sim.api(method, f"/api/v2/organizations/{gone['id']}", json=body)
        assert response.status_code == 404
        assert response.json() == _not_found("Organization")
    assert _ids(sim.api("GET", "/api/v2/organizations")) == [kept["id"]]
    assert _ids(sim.api("GET", "/api/v2/organizations", params={"ids": str(gone["id"])})) == []
    assert sim.control("stats")["records"]["organization"] == 1


def test_organization_merge_keeps_merge_with_id_and_moves_the_deals(pipedrive_sim):
    sim = pipedrive_sim
    [ifs_field] = sim.control(
        "seed", {"organization_fields": [{"name": "IFS id", "field_type": "varchar"}]}
    )["organization_fields"]
    key = ifs_field["key"]
    merged = _create(
        sim,
        "organizations",
        {"name": "Acme (dup)", "website": "acme.example", "custom_fields": {key: "C-1"}},
    )
    survivor = _create(sim, "organizations", {"name": "Acme AB"})
    deal = _create(sim, "deals", {"title": "Order 1", "org_id": merged["id"]})
    response = sim.api(
        "PUT", f"/v1/organizations/{merged['id']}/merge", json={"merge_with_id": survivor["id"]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "data": {"id": survivor["id"]}}
    assert sim.api("GET", f"/api/v2/organizations/{merged['id']}").status_code == 404
    kept = sim.api("GET", f"/api/v2/organizations/{survivor['id']}").json()["data"]
    # The survivor's own values win; its empty fields take the merged record's values.
    assert (kept["name"], kept["website"], kept["custom_fields"]) == (
        "Acme AB",
        "acme.example",
        {key: "C-1"},
    )
    assert sim.api("GET", f"/api/v2/deals/{deal['id']}").json()["data"]["org_id"] == survivor["id"]
    assert _ids(sim.api("GET", "/api/v2/organizations")) == [survivor["id"]]
    assert sim.control("stats")["merges"] == {"deal": 0, "organization": 1}


def test_deal_merge_answers_the_surviving_deal_with_merge_what_id(pipedrive_sim):
    sim = pipedrive_sim
    org = _create(sim, "organizations", {"name": "Acme AB"})
    merged = _create(sim, "deals", {"title": "Order 1 (dup)", "value": 5, "org_id": org["id"]})
    survivor = _create(sim, "deals", {"title": "Order 1", "value": 100})
    response = sim.api(
        "PUT", f"/v1/deals/{merged['id']}/merge", json={"merge_with_id": survivor["id"]}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["id"], data["merge_what_id"], data["title"], data["value"]) == (
        survivor["id"],
        merged["id"],
        "Order 1",
        100,
    )
    assert (data["org_id"], data["org_name"], data["deleted"]) == (org["id"], "Acme AB", False)
    assert sim.api("GET", f"/api/v2/deals/{merged['id']}").status_code == 404
    assert _ids(sim.api("GET", "/api/v2/deals")) == [survivor["id"]]
    assert _ids(sim.api("GET", "/api/v2/deals", params={"status": "deleted"})) == [merged["id"]]


def test_merge_refuses_itself_a_deleted_record_and_a_missing_merge_with_id(pipedrive_sim):
    sim = pipedrive_sim
    a = _create(sim, "organizations", {"name": "A"})
    b = _create(sim, "organizations", {"name": "B"})
    path = f"/v1/organizations/{a['id']}/merge"
    assert sim.api("PUT", path, json={"merge_with_id": a["id"]}).status_code == 400
    assert sim.api("PUT", path, json={}).status_code == 400
    sim.control(f"organizations/{b['id']}/delete", {})
    response = sim.api("PUT", path, json={"merge_with_id": b["id"]})
    assert response.status_code == 404
    assert response.json() == _not_found("Organization")
    assert sim.api("GET", f"/api/v2/organizations/{a['id']}").status_code == 200


def test_user_merge_control_merges_in_the_app(pipedrive_sim):
    sim = pipedrive_sim
    merged = _create(sim, "deals", {"title": "dup"})
    survivor = _create(sim, "deals", {"title": "Order 2"})
    answer = sim.control(f"deals/{merged['id']}/merge", {"merge_with_id": survivor["id"]})
    assert (answer["id"], answer["title"]) == (survivor["id"], "Order 2")
    assert sim.state.merged_into == {("deal", merged["id"]): survivor["id"]}
    failed = requests.post(
        f"{sim.url}/_sim/deals/{merged['id']}/merge",
        json={"merge_with_id": survivor["id"]},
        timeout=5,
    )
    assert failed.status_code == 404


def test_archived_deals_leave_the_list_but_stay_readable_and_writable(pipedrive_sim):
    sim = pipedrive_sim
    open_deal = _create(sim, "deals", {"title": "Open"})
    deal = _create(sim, "deals", {"title": "Old"})
    assert "archive_time" not in deal and deal["is_archived"] is False
    archived = sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"is_archived": True})
    assert archived.status_code == 200, archived.text
    assert archived.json()["data"]["is_archived"] is True
    assert archived.json()["data"]["archive_time"].endswith("Z")
    assert _ids(sim.api("GET", "/api/v2/deals")) == [open_deal["id"]]
    assert _ids(sim.api("GET", "/api/v2/deals/archived")) == [deal["id"]]
    assert _ids(sim.api("GET", "/api/v2/deals/archived", params={"status": "won"})) == []
    patched = sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"value": 7})
    assert patched.json()["data"]["value"] == 7
    assert sim.api("GET", f"/api/v2/deals/{deal['id']}").json()["data"]["is_archived"] is True
    stamped = sim.api(
        "PATCH",
        f"/api/v2/deals/{deal['id']}",
        json={"archive_time": "2026-01-02 03:04:05"},
    )
    assert stamped.json()["data"]["archive_time"] == "2026-01-02T03:04:05Z"
    restored = sim.control(f"deals/{deal['id']}/unarchive", {})
    assert restored["is_archived"] is False and "archive_time" not in restored
    assert _ids(sim.api("GET", "/api/v2/deals")) == [open_deal["id"], deal["id"]]
    assert sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"is_archived": 1}).status_code == (
        400
    )


def test_archive_control_archives_as_a_user(pipedrive_sim):
    sim = pipedrive_sim
    deal = _create(sim, "deals", {"title": "Old"})
    answer = sim.control(f"deals/{deal['id']}/archive", {"archive_time": "2026-02-01 10:00:00"})
    assert (answer["is_archived"], answer["archive_time"]) == (True, "2026-02-01T10:00:00Z")
    assert _ids(sim.api("GET", "/api/v2/deals/archived")) == [deal["id"]]


def test_search_sees_a_new_record_only_after_the_lag(pipedrive_sim):
    sim = pipedrive_sim
    seeded = sim.control("seed", {"organizations": [{"name": "Seeded Acme"}]})["organizations"]
    assert sim.control("settings", {"search_lag_s": 0.6}) == {"search_lag_s": 0.6}
    org = _create(sim, "organizations", {"name": "New Acme"})

    def found() -> list[int]:
        response = sim.api("GET", "/api/v2/organizations/search", params={"term": "Acme"})
        return sorted(hit["item"]["id"] for hit in response.json()["data"]["items"])

    assert found() == seeded
    # The record itself is readable and listed at once: only the search index lags.
    assert sim.api("GET", f"/api/v2/organizations/{org['id']}").status_code == 200
    assert sim.wait_for(lambda: found() == sorted([*seeded, org["id"]]), timeout=5)
    deal = _create(sim, "deals", {"title": "Order 99"})
    assert (
        sim.api("GET", "/api/v2/deals/search", params={"term": "Order 99"}).json()["data"]["items"]
        == []
    )
    sim.control("settings", {"search_lag_s": 0})
    items = sim.api("GET", "/api/v2/deals/search", params={"term": "Order 99"}).json()["data"]
    assert [hit["item"]["id"] for hit in items["items"]] == [deal["id"]]


def test_search_lag_is_counted_from_creation(pipedrive_sim):
    sim = pipedrive_sim
    _create(sim, "organizations", {"name": "Early Acme"})
    time.sleep(0.3)
    sim.settings.search_lag_s = 0.25
    response = sim.api("GET", "/api/v2/organizations/search", params={"term": "Early"})
    assert len(response.json()["data"]["items"]) == 1


def test_hidden_credentials_are_null_in_get_webhooks_only(pipedrive_sim):
    sim = pipedrive_sim
    created = sim.api(
        "POST",
        "/v1/webhooks",
        json={
            "name": "ml-connector",
            "subscription_url": "http://127.0.0.1:9/hook",
            "event_action": "change",
            "event_object": "deal",
            "http_auth_user": "hook",
            "http_auth_password": "s3cret",
        },
    ).json()["data"]
    assert created["http_auth_user"] == "hook"
    assert sim.control("settings", {"hide_webhook_credentials": True}) == {
        "hide_webhook_credentials": True
    }
    [listed] = sim.api("GET", "/v1/webhooks").json()["data"]
    assert (listed["id"], listed["http_auth_user"], listed["http_auth_password"]) == (
        created["id"],
        None,
        None,
    )
    # The subscription keeps its credentials: deliveries still authenticate.
    [stored] = sim.control("webhooks")
    assert (stored["http_auth_user"], stored["http_auth_password"]) == ("hook", "s3cret")


def test_settings_control_refuses_unknown_names_and_wrong_types(pipedrive_sim):
    url = f"{pipedrive_sim.url}/_sim/settings"
    assert requests.post(url, json={"no_such": 1}, timeout=5).status_code == 400
    assert requests.post(url, json={"api_tokens": ["x"]}, timeout=5).status_code == 400
    assert requests.post(url, json={"search_lag_s": "5"}, timeout=5).status_code == 400
    assert requests.post(url, json={"hide_webhook_credentials": 1}, timeout=5).status_code == 400
    assert pipedrive_sim.settings.search_lag_s == 0.0
