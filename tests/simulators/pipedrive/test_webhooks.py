"""Webhook delivery to a real HTTP receiver: auth, payloads, retries, ban, faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator

import pytest

from simulators.serving import RunningServer


class Receiver:
    """A tiny WSGI endpoint that records every delivery and answers with scripted statuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        self.statuses: list[int] = []  # answered in order; 200 once exhausted

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length)
        with self.lock:
            status = self.statuses.pop(0) if self.statuses else 200
            self.calls.append(
                {
                    "body": json.loads(raw),
                    "raw": raw,
                    "authorization": environ.get("HTTP_AUTHORIZATION"),
                    "signature": environ.get("HTTP_X_PIPEDRIVE_SIGNATURE"),
                    "status": status,
                }
            )
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with RunningServer(app) as server:
        yield app, f"{server.url}/pipedrive"


@pytest.fixture
def receiver(pipedrive_sim, receiver_server) -> tuple[Receiver, str]:
    """The module's receiver, emptied after the simulator was reset for this test."""
    app, url = receiver_server
    with app.lock:
        app.calls.clear()
        app.statuses.clear()
    return app, url


def _subscribe(sim, url, **extra):
    body = {
        "name": "ml-connector",
        "subscription_url": url,
        "event_action": "*",
        "event_object": "*",
        "http_auth_user": "hook",
        "http_auth_password": "s3cret",
        "version": "2.0",
        **extra,
    }
    response = sim.api("POST", "/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def test_api_change_is_delivered_with_basic_auth_and_v2_payload(pipedrive_sim, receiver):
    app, url = receiver
    hook = _subscribe(pipedrive_sim, url)
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "Order 1"}).json()["data"]
    pipedrive_sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"title": "Order 1b"})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 2)
    create, change = (call["body"] for call in app.calls)
    expected_auth = "Basic " + base64.b64encode(b"hook:s3cret").decode()
    assert all(call["authorization"] == expected_auth for call in app.calls)
    assert create["meta"]["action"] == "create" and create["previous"] is None
    meta = change["meta"]
    assert meta["action"] == "change" and meta["entity"] == "deal"
    assert meta["entity_id"] == str(deal["id"])
    assert meta["change_source"] == "api"
    assert meta["user_id"] == str(pipedrive_sim.settings.integration_user_id)
    assert meta["webhook_id"] == str(hook["id"])
    assert meta["attempt"] == 1 and meta["version"] == "2.0"
    assert meta["id"] != create["meta"]["id"]
    assert change["data"]["title"] == "Order 1b"
    assert change["previous"] == {"title": "Order 1"}


def test_user_move_in_the_app_is_a_change_from_source_app(pipedrive_sim, receiver):
    app, url = receiver
    _subscribe(pipedrive_sim, url, event_action="change", event_object="deal")
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "x"}).json()["data"]
    stages = pipedrive_sim.api("GET", "/api/v2/stages").json()["data"]
    pipedrive_sim.control(f"deals/{deal['id']}/move", {"stage_id": stages[1]["id"]})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 1)
    body = app.calls[0]["body"]
    assert len(app.calls) == 1  # the create was not subscribed
    assert body["meta"]["change_source"] == "app"
    assert body["meta"]["user_id"] == str(pipedrive_sim.settings.app_user_id)
    assert body["data"]["stage_id"] == stages[1]["id"]
    assert body["previous"]["stage_id"] == stages[0]["id"]


def test_failed_delivery_is_retried_with_scaled_delays(pipedrive_sim, receiver):
    app, url = receiver
    app.statuses = [500, 503, 200]
    _subscribe(pipedrive_sim, url)
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 3)
    attempts = [call["body"]["meta"]["attempt"] for call in app.calls]
    assert attempts == [1, 2, 3]
    assert len({call["body"]["meta"]["id"] for call in app.calls}) == 1
    # The simulator counts a delivery once its answer is back, just after the receiver saw
    # the call: wait for the count rather than read it once (it raced under load).
    assert pipedrive_sim.wait_for(
        lambda: pipedrive_sim.control("stats")["webhooks"]["delivered_ok"] == 1
    )
    assert pipedrive_sim.control("stats")["webhooks"]["failed_attempts"] == 2


def test_retries_stop_after_the_last_delay(pipedrive_sim, receiver):
    app, url = receiver
    app.statuses = [500] * 10
    pipedrive_sim.settings.webhook_retry_delays_s = (1.0, 1.0)
    _subscribe(pipedrive_sim, url)
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 3)
    assert pipedrive_sim.wait_for(
        lambda: pipedrive_sim.control("stats")["webhooks"]["pending"] == 0
    )
    assert [c["body"]["meta"]["attempt"] for c in app.calls] == [1, 2, 3]


def test_repeated_first_try_failures_ban_the_webhook_and_drop_events(pipedrive_sim, receiver):
    app, url = receiver
    pipedrive_sim.settings.ban_after_failures = 3
    pipedrive_sim.settings.webhook_retry_delays_s = (1000.0,)  # retries stay out of the way
    app.statuses = [500] * 3
    _subscribe(pipedrive_sim, url)
    for number in range(3):
        pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": f"Org {number}"})
    assert pipedrive_sim.wait_for(lambda: pipedrive_sim.control("stats")["webhooks"]["bans"] == 1)
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "during ban"})
    stats = pipedrive_sim.control("stats")["webhooks"]
    assert stats["dropped"] >= 1
    assert len(app.calls) == 3


def test_duplicate_deliveries_share_the_event_id(pipedrive_sim, receiver):
    app, url = receiver
    pipedrive_sim.control("faults", {"duplicate_webhooks": 1.0, "seed": 3})
    _subscribe(pipedrive_sim, url)
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 2)
    assert app.calls[0]["body"]["meta"]["id"] == app.calls[1]["body"]["meta"]["id"]
    log = pipedrive_sim.control("webhook-deliveries")
    assert sorted(entry["duplicate"] for entry in log) == [False, True]


def test_reordering_delivers_a_later_event_first(pipedrive_sim, receiver):
    app, url = receiver
    pipedrive_sim.control("faults", {"reorder_webhooks": True, "reorder_hold_s": 30.0})
    _subscribe(pipedrive_sim, url, event_object="deal")
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "v1"}).json()["data"]
    pipedrive_sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"title": "v2"})
    assert pipedrive_sim.wait_for(lambda: len(app.calls) >= 2)
    assert [c["body"]["meta"]["action"] for c in app.calls] == ["change", "create"]


def test_hmac_secret_signs_the_raw_body(pipedrive_sim, receiver):
    app, url = receiver
    hook = _subscribe(pipedrive_sim, url)
    pipedrive_sim.control(f"webhooks/{hook['id']}/hmac_secret", {"secret": "k"})
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: app.calls)
    call = app.calls[0]
    assert call["signature"] == hmac.new(b"k", call["raw"], hashlib.sha256).hexdigest()


def test_v1_subscription_gets_a_v1_payload(pipedrive_sim, receiver):
    app, url = receiver
    _subscribe(pipedrive_sim, url, version="1.0", http_auth_user=None, http_auth_password=None)
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: app.calls)
    body = app.calls[0]["body"]
    assert body["event"] == "added.organization"
    assert body["meta"]["action"] == "added" and body["current"]["name"] == "Acme"
    assert app.calls[0]["authorization"] is None


def test_webhook_deleted_by_pipedrive_stops_deliveries(pipedrive_sim, receiver):
    app, url = receiver
    hook = _subscribe(pipedrive_sim, url)
    pipedrive_sim.control(f"webhooks/{hook['id']}/delete", {})
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.api("GET", "/v1/webhooks").json()["data"] == []
    assert pipedrive_sim.control("stats")["webhooks"]["deleted_by_pipedrive"] == 1
    assert app.calls == []


def test_webhook_creation_requires_a_name(pipedrive_sim, receiver):
    _, url = receiver
    response = pipedrive_sim.api(
        "POST",
        "/v1/webhooks",
        json={"subscription_url": url, "event_action": "*", "event_object": "deal"},
    )
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def _settled(sim) -> bool:
    return sim.control("stats")["webhooks"]["pending"] == 0


def test_user_delete_is_a_delete_event_carrying_the_previous_object(pipedrive_sim, receiver):
    app, url = receiver
    _subscribe(pipedrive_sim, url, event_action="delete", event_object="deal")
    deal = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "Test deal"}).json()["data"]
    pipedrive_sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"value": 3})
    pipedrive_sim.control(f"deals/{deal['id']}/delete", {})
    assert pipedrive_sim.wait_for(lambda: app.calls)
    assert pipedrive_sim.wait_for(lambda: _settled(pipedrive_sim))
    [call] = app.calls
    body = call["body"]
    assert (body["meta"]["action"], body["meta"]["entity_id"]) == ("delete", str(deal["id"]))
    assert body["meta"]["change_source"] == "app"
    assert "merged_to_id" not in body["meta"]
    assert body["data"] is None
    assert (body["previous"]["title"], body["previous"]["value"]) == ("Test deal", 3)


def test_subscriptions_get_only_their_event_action_and_object(pipedrive_sim, receiver):
    app, url = receiver
    sim = pipedrive_sim
    hooks = {
        (action, entity): _subscribe(sim, url, event_action=action, event_object=entity)["id"]
        for action, entity in (
            ("change", "deal"),
            ("delete", "*"),
            ("create", "organization"),
            ("*", "organization"),
        )
    }
    org = sim.api("POST", "/api/v2/organizations", json={"name": "Acme"}).json()["data"]
    deal = sim.api("POST", "/api/v2/deals", json={"title": "x"}).json()["data"]
    sim.api("PATCH", f"/api/v2/deals/{deal['id']}", json={"title": "y"})
    sim.api("DELETE", f"/api/v2/deals/{deal['id']}")
    sim.api("DELETE", f"/api/v2/organizations/{org['id']}")
    assert sim.wait_for(lambda: len(app.calls) >= 6)
    assert sim.wait_for(lambda: _settled(sim))
    received: dict[str, list[tuple[str, str]]] = {}
    for call in app.calls:
        meta = call["body"]["meta"]
        received.setdefault(meta["webhook_id"], []).append((meta["action"], meta["entity"]))
    assert {key: sorted(received[str(hook)]) for key, hook in hooks.items()} == {
        ("change", "deal"): [("change", "deal")],
        ("delete", "*"): [("delete", "deal"), ("delete", "organization")],
        ("create", "organization"): [("create", "organization")],
        ("*", "organization"): [("create", "organization"), ("delete", "organization")],
    }


def test_organization_merge_is_a_delete_with_merged_to_id_and_changes(pipedrive_sim, receiver):
    """As the webhooks v2 migration guide says: no `merged` action, a delete and a change."""
    app, url = receiver
    sim = pipedrive_sim
    merged, survivor = sim.control(
        "seed", {"organizations": [{"name": "Acme (dup)"}, {"name": "Acme AB"}]}
    )["organizations"]
    [deal] = sim.control("seed", {"deals": [{"title": "Order 1", "org_id": merged}]})["deals"]
    _subscribe(sim, url)
    sim.control(f"organizations/{merged}/merge", {"merge_with_id": survivor})
    assert sim.wait_for(lambda: len(app.calls) >= 3)
    assert sim.wait_for(lambda: _settled(sim))
    events = {
        (c["body"]["meta"]["action"], c["body"]["meta"]["entity"]): c["body"] for c in app.calls
    }
    assert len(app.calls) == 3 and set(events) == {
        ("delete", "organization"),
        ("change", "organization"),
        ("change", "deal"),
    }
    deleted = events[("delete", "organization")]
    assert deleted["meta"]["entity_id"] == str(merged)
    assert deleted["meta"]["merged_to_id"] == str(survivor)
    assert deleted["meta"]["change_source"] == "app"
    assert deleted["data"] is None and deleted["previous"]["id"] == merged
    changed = events[("change", "organization")]
    assert changed["meta"]["entity_id"] == str(survivor) and changed["data"]["id"] == survivor
    assert "merged_to_id" not in changed["meta"]
    moved = events[("change", "deal")]
    assert moved["meta"]["entity_id"] == str(deal)
    assert (moved["data"]["org_id"], moved["previous"]) == (survivor, {"org_id": merged})


def test_deal_merge_by_api_reaches_a_delete_only_subscription(pipedrive_sim, receiver):
    app, url = receiver
    sim = pipedrive_sim
    merged, survivor = sim.control("seed", {"deals": [{"title": "dup"}, {"title": "Order 1"}]})[
        "deals"
    ]
    _subscribe(sim, url, event_action="delete", event_object="deal")
    sim.api("PUT", f"/v1/deals/{merged}/merge", json={"merge_with_id": survivor})
    assert sim.wait_for(lambda: app.calls)
    assert sim.wait_for(lambda: _settled(sim))
    [call] = app.calls
    meta = call["body"]["meta"]
    assert (meta["action"], meta["entity_id"], meta["merged_to_id"]) == (
        "delete",
        str(merged),
        str(survivor),
    )
    assert meta["change_source"] == "api"


def test_archive_is_a_change_of_is_archived(pipedrive_sim, receiver):
    app, url = receiver
    sim = pipedrive_sim
    [deal] = sim.control("seed", {"deals": [{"title": "Old"}]})["deals"]
    _subscribe(sim, url, event_action="change", event_object="deal")
    sim.control(f"deals/{deal}/archive", {})
    assert sim.wait_for(lambda: app.calls)
    body = app.calls[0]["body"]
    assert body["meta"]["change_source"] == "app"
    assert body["data"]["is_archived"] is True and body["data"]["archive_time"]
    assert body["previous"] == {"is_archived": False, "archive_time": None}


def test_hidden_credentials_still_authenticate_deliveries(pipedrive_sim, receiver):
    app, url = receiver
    pipedrive_sim.settings.hide_webhook_credentials = True
    _subscribe(pipedrive_sim, url)
    [listed] = pipedrive_sim.api("GET", "/v1/webhooks").json()["data"]
    assert listed["http_auth_user"] is None
    pipedrive_sim.api("POST", "/api/v2/organizations", json={"name": "Acme"})
    assert pipedrive_sim.wait_for(lambda: app.calls)
    assert app.calls[0]["authorization"] == "Basic " + base64.b64encode(b"hook:s3cret").decode()
