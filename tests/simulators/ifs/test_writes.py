"""PATCH with If-Match, bound state actions and simulated user edits."""

from __future__ import annotations

import pytest
import requests

from simulators.ifs.state import parse_etag

ACTION = "IfsApp.CustomerOrderHandling.CustomerOrder_"


@pytest.fixture
def order(ifs_sim):
    ifs_sim.state.insert_customer({"CustomerId": "C00001"})
    ifs_sim.state.insert_order({"OrderNo": "C1000000001", "Objstate": "Planned"})
    return ifs_sim


def url(sim, order_no="C1000000001"):
    return f"{sim.orders_url}(OrderNo='{order_no}')"


def patch(sim, body, if_match=None, **headers):
    if if_match is not None:
        headers["If-Match"] = if_match
    return requests.patch(url(sim), json=body, headers=sim.headers(**headers), timeout=10)


def act(sim, action, if_match=None, order_no="C1000000001", parameters=None):
    headers = sim.headers(**({"If-Match": if_match} if if_match else {}))
    target = f"{url(sim, order_no)}/{ACTION}{action}"
    return requests.post(target, json=parameters or {}, headers=headers, timeout=10)


def etag(sim, order_no="C1000000001"):
    return sim.state.get_order(order_no)["@odata.etag"]


def test_patch_with_current_etag_updates_and_returns_new_etag(order):
    before = etag(order)
    response = patch(order, {"Cf_Crm_Stage": "Won", "CustomerPoNo": "PO-1"}, before)
    assert response.status_code == 200
    body = response.json()
    assert body["Cf_Crm_Stage"] == "Won" and body["CustomerPoNo"] == "PO-1"
    assert body["@odata.etag"] == response.headers["ETag"] != before
    assert parse_etag(body["@odata.etag"])[1] > parse_etag(before)[1]
    assert order.state.get_order("C1000000001")["Cf_Crm_Stage"] == "Won"
    assert order.state.stats()["writes"] == 1


def test_patch_return_minimal_is_204_with_etag(order):
    response = patch(order, {"Cf_Crm_Stage": "Lost"}, etag(order), Prefer="return=minimal")
    assert response.status_code == 204
    assert response.headers["ETag"] == etag(order)


def test_patch_with_stale_etag_is_412(order):
    stale = etag(order)
    order.state.edit_order("C1000000001", CustomerPoNo="changed by a user")
    response = patch(order, {"Cf_Crm_Stage": "Won"}, stale)
    assert response.status_code == 412
    assert "modified by another user" in response.json()["error"]["message"]
    assert order.state.get_order("C1000000001")["Cf_Crm_Stage"] is None
    assert order.state.stats()["precondition_failed"] == 1


def test_patch_without_if_match_is_428(order):
    response = patch(order, {"Cf_Crm_Stage": "Won"})
    assert response.status_code == 428
    assert response.json()["error"]["code"] == "ODP_MISSING_PRECONDITION"
    assert order.state.stats()["precondition_required"] == 1


def test_patch_with_star_skips_the_concurrency_check(order):
    order.state.edit_order("C1000000001", CustomerPoNo="x")
    assert patch(order, {"Cf_Crm_Stage": "Won"}, "*").status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"OrderNo": "C2"}, {"Objstate": "Released"}, {"keyref": "X"}],
)
def test_patch_of_read_only_properties_is_400(order, body):
    response = patch(order, body, etag(order))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "DATABASE_ERROR"
    assert order.state.get_order("C1000000001")["Objstate"] == "Planned"


@pytest.mark.parametrize(
    "body",
    [{"NoSuchField": 1}, {"TotalAmount": "lots"}, {"DateEntered": "01/07/2025"}, ["x"]],
)
def test_patch_with_bad_body_is_400_deserialization_error(order, body):
    response = patch(order, body, etag(order))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ODP_DESERIALIZATION_ERROR"


def test_patch_unknown_order_is_404(order):
    response = requests.patch(
        url(order, "C404"), json={}, headers=order.headers(**{"If-Match": "*"}), timeout=10
    )
    assert response.status_code == 404


def test_customer_patch_follows_the_same_rules(ifs_sim):
    ifs_sim.state.insert_customer({"CustomerId": "C00009", "Name": "Old"})
    target = f"{ifs_sim.customers_url}(CustomerId='C00009')"
    current = ifs_sim.state.get_customer("C00009")["@odata.etag"]
    missing = requests.patch(target, json={"Name": "New"}, headers=ifs_sim.headers(), timeout=10)
    assert missing.status_code == 428
    ok = requests.patch(
        target, json={"Name": "New"}, headers=ifs_sim.headers(**{"If-Match": current}), timeout=10
    )
    assert ok.status_code == 200 and ok.json()["Name"] == "New"
    stale = requests.patch(
        target, json={"Name": "X"}, headers=ifs_sim.headers(**{"If-Match": current}), timeout=10
    )
    assert stale.status_code == 412
    key = requests.patch(
        target, json={"CustomerId": "Z"}, headers=ifs_sim.headers(**{"If-Match": "*"}), timeout=10
    )
    assert key.status_code == 400


def test_objversion_strictly_increases_on_every_write_within_a_second(order):
    versions = [parse_etag(etag(order))[1]]
    for n in range(5):
        order.state.edit_order("C1000000001", CustomerPoNo=f"edit {n}")
        versions.append(parse_etag(etag(order))[1])
    assert versions == sorted(set(versions))


def test_user_edit_over_http_bumps_etag(order):
    before = etag(order)
    response = requests.post(
        f"{order.url}/_sim/orders/C1000000001/edit",
        json={"fields": {"TotalAmount": 123.0}},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["TotalAmount"] == 123.0
    assert etag(order) != before
    assert order.state.stats()["user_edits"] == 1


def test_state_actions_walk_the_state_machine(order):
    steps = [
        ("Release", "Released"),
        ("Block", "Blocked"),
        ("Unblock", "Released"),
        ("Reserve", "Reserved"),
        ("Deliver", "Delivered"),
    ]
    for action, expected in steps:
        before = etag(order)
        response = act(order, action, before)
        assert response.status_code == 204, response.text
        assert order.state.get_order("C1000000001")["Objstate"] == expected
        assert etag(order) != before


@pytest.mark.parametrize(
    ("start", "action"),
    [
        ("Planned", "Reserve"),
        ("Delivered", "Cancel"),
        ("Invoiced", "CancelOrder"),
        ("Planned", "Unblock"),
        ("Cancelled", "Release"),
        ("Planned", "Deliver"),
    ],
)
def test_invalid_transitions_are_400_ifs_errors(order, start, action):
    order.state.edit_order("C1000000001", Objstate=start)
    # CancelOrder requires its reason: give it, so the state check is what refuses.
    parameters = {"CancelReason": "LATE"} if action == "CancelOrder" else None
    response = act(order, action, etag(order), parameters=parameters)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "DATABASE_ERROR"
    assert f'"{action}" is not allowed' in error["message"] and start in error["message"]
    assert order.state.get_order("C1000000001")["Objstate"] == start


def test_cancel_from_planned_released_and_blocked(order):
    for start in ("Planned", "Released", "Blocked"):
        order.state.edit_order("C1000000001", Objstate=start)
        assert act(order, "Cancel", etag(order)).status_code == 204
        assert order.state.get_order("C1000000001")["Objstate"] == "Cancelled"


def test_actions_need_a_current_if_match_and_a_known_name(order):
    assert act(order, "Release").status_code == 428
    stale = etag(order)
    order.state.edit_order("C1000000001", CustomerPoNo="x")
    assert act(order, "Release", stale).status_code == 412
    assert act(order, "Teleport", etag(order)).status_code == 404
    wrong_namespace = requests.post(
        f"{url(order)}/IfsApp.Other.CustomerOrder_Release",
        headers=order.headers(**{"If-Match": "*"}),
        timeout=10,
    )
    assert wrong_namespace.status_code == 404
    assert order.state.get_order("C1000000001")["Objstate"] == "Planned"
