"""`$metadata` as Olingo serves it, and the action parameters and facets it declares enforced."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest
import requests

EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
ORDER_TYPE = "IfsApp.CustomerOrderHandling.CustomerOrder"
ACTION = "IfsApp.CustomerOrderHandling.CustomerOrder_"


def metadata_url(sim, projection):
    return f"{sim.projection_url}/{projection}.svc/$metadata"


def schema_of(sim, projection):
    response = requests.get(metadata_url(sim, projection), headers=sim.headers(), timeout=10)
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    assert root.tag == f"{EDMX}Edmx" and root.get("Version") == "4.0"
    schema = root.find(f"{EDMX}DataServices/{EDM}Schema")
    assert schema is not None
    return schema


@pytest.fixture
def order(ifs_sim):
    ifs_sim.state.insert_customer({"CustomerId": "C00001"})
    ifs_sim.state.insert_order({"OrderNo": "C1000000001", "Objstate": "Planned"})
    return ifs_sim


def act(sim, action, body):
    etag = sim.state.get_order("C1000000001")["@odata.etag"]
    return requests.post(
        f"{sim.orders_url}(OrderNo='C1000000001')/{ACTION}{action}",
        json=body,
        headers=sim.headers(**{"If-Match": etag}),
        timeout=10,
    )


def test_metadata_is_xml_with_odata_version_and_needs_a_token(ifs_sim):
    url = metadata_url(ifs_sim, "CustomerOrderHandling")
    assert requests.get(url, timeout=10).status_code == 401
    response = requests.get(url, headers=ifs_sim.headers(), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/xml")
    assert response.headers["OData-Version"] == "4.0"
    assert ifs_sim.state.stats()["requests"]["GET $metadata"] == 2


def test_unknown_projection_and_other_methods(ifs_sim):
    missing = requests.get(
        metadata_url(ifs_sim, "NoSuchHandling"), headers=ifs_sim.headers(), timeout=10
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "MI_METADATA_NOTFOUND"
    posted = requests.post(
        metadata_url(ifs_sim, "CustomerHandling"), headers=ifs_sim.headers(), timeout=10
    )
    assert posted.status_code == 405


def test_order_schema_has_key_enum_set_and_bound_actions_with_binding_parameter(ifs_sim):
    schema = schema_of(ifs_sim, "CustomerOrderHandling")
    assert schema.get("Namespace") == "IfsApp.CustomerOrderHandling"
    enum = schema.find(f"{EDM}EnumType[@Name='CustomerOrderState']")
    assert enum is not None
    assert [m.get("Name") for m in enum.findall(f"{EDM}Member")] == [
        "Planned",
        "Released",
        "Reserved",
        "Picked",
        "PartiallyDelivered",
        "Delivered",
        "Invoiced",
        "Cancelled",
        "Blocked",
    ]
    entity = schema.find(f"{EDM}EntityType[@Name='CustomerOrder']")
    assert entity is not None
    assert [r.get("Name") for r in entity.findall(f"{EDM}Key/{EDM}PropertyRef")] == ["OrderNo"]
    state = entity.find(f"{EDM}Property[@Name='Objstate']")
    assert state is not None
    assert state.get("Type") == "IfsApp.CustomerOrderHandling.CustomerOrderState"
    order_no = entity.find(f"{EDM}Property[@Name='OrderNo']")
    assert order_no is not None
    assert (order_no.get("Nullable"), order_no.get("MaxLength")) == ("false", "12")
    entity_set = schema.find(f"{EDM}EntityContainer/{EDM}EntitySet[@Name='CustomerOrderSet']")
    assert entity_set is not None and entity_set.get("EntityType") == ORDER_TYPE
    actions = {a.get("Name"): a for a in schema.findall(f"{EDM}Action")}
    assert set(actions) == {
        f"CustomerOrder_{name}"
        for name in ("Release", "Reserve", "Block", "Unblock", "Cancel", "CancelOrder", "Deliver")
    }
    for action in actions.values():
        assert action.get("IsBound") == "true"
        binding = action.findall(f"{EDM}Parameter")[0]
        assert (binding.get("Name"), binding.get("Type")) == ("it", ORDER_TYPE)
    reason = actions["CustomerOrder_CancelOrder"].find(f"{EDM}Parameter[@Name='CancelReason']")
    assert reason is not None
    assert (reason.get("Type"), reason.get("Nullable")) == ("Edm.String", "false")
    optional = actions["CustomerOrder_Cancel"].find(f"{EDM}Parameter[@Name='CancelReason']")
    assert optional is not None and optional.get("Nullable") is None


def test_customer_schema_has_no_actions_and_marks_what_patch_refuses(ifs_sim):
    schema = schema_of(ifs_sim, "CustomerHandling")
    assert schema.findall(f"{EDM}Action") == []
    entity = schema.find(f"{EDM}EntityType[@Name='CustomerInfo']")
    assert entity is not None
    terms = {
        p.get("Name"): [a.get("Term") for a in p.findall(f"{EDM}Annotation")]
        for p in entity.findall(f"{EDM}Property")
    }
    assert terms["CustomerId"] == ["Core.Immutable"]
    assert terms["keyref"] == ["Core.Computed"] and terms["Name"] == []


def test_cancel_keeps_the_optional_reason_on_the_order(order):
    assert act(order, "Cancel", {"CancelReason": "PRICE"}).status_code == 204
    cancelled = order.state.get_order("C1000000001")
    assert (cancelled["Objstate"], cancelled["CancelReason"]) == ("Cancelled", "PRICE")


def test_cancel_order_without_its_required_reason_is_a_400_and_with_it_cancels(order):
    for body in ({}, {"CancelReason": None}):
        refused = act(order, "CancelOrder", body)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "ODP_DESERIALIZATION_ERROR"
        assert "'CancelReason'" in error["message"] and "required" in error["message"]
        assert order.state.get_order("C1000000001")["Objstate"] == "Planned"
    assert act(order, "CancelOrder", {"CancelReason": "LATE"}).status_code == 204
    assert order.state.get_order("C1000000001")["CancelReason"] == "LATE"


@pytest.mark.parametrize(
    ("action", "body", "says"),
    [
        ("Release", {"Reason": "x"}, "'Reason' is not a parameter"),
        ("Cancel", {"CancelReason": 5}, "expected a string"),
        ("Cancel", {"CancelReason": "X" * 11}, "longer than 10"),
        ("Release", [], "JSON object"),
    ],
)
def test_unknown_mistyped_and_too_long_parameters_are_400(order, action, body, says):
    response = act(order, action, body)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
    assert order.state.get_order("C1000000001")["Objstate"] == "Planned"


@pytest.mark.parametrize(
    ("body", "says"),
    [({"Contract": None}, "may not be null"), ({"CurrencyCode": "EURO"}, "longer than 3")],
)
def test_patch_honours_nullable_and_max_length_from_the_description(order, body, says):
    response = requests.patch(
        f"{order.orders_url}(OrderNo='C1000000001')",
        json=body,
        headers=order.headers(**{"If-Match": "*"}),
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ODP_DESERIALIZATION_ERROR"
    assert says in response.json()["error"]["message"]
