"""Seeded IFS entities have the real sample's field names, value formats and ETags."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import requests

from simulators.ifs.app import create_app
from simulators.ifs.schema import customer_info, customer_order
from simulators.ifs.state import parse_etag
from tests.data import IFS_SAMPLES

SAMPLES = IFS_SAMPLES
SAMPLE_FILE = SAMPLES / "customer-order-get-by-key-with-lines.json"
BUNDLED_SAMPLE = (
    Path(__file__).resolve().parents[3] / "simulators/ifs/data/customer_order_sample.json"
)
CUSTOM_FIELDS = {"Cf_Cost_Center", "Cf_Profit_Center", "Cf_Crm_Stage"}
STATES = {
    "Planned", "Released", "Reserved", "Picked", "PartiallyDelivered", "Delivered",
    "Invoiced", "Cancelled", "Blocked",
}  # fmt: skip
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def real_header() -> dict:
    if SAMPLE_FILE.exists():
        return json.loads(SAMPLE_FILE.read_text())["customerOrderHeader"]
    return json.loads(BUNDLED_SAMPLE.read_text())


def decode_etag(etag: str) -> str:
    assert etag.startswith('W/"') and etag.endswith('"')
    return base64.b64decode(etag[3:-1]).decode("ascii")


def test_bundled_sample_is_the_real_header_byte_for_byte_in_content():
    assert json.loads(BUNDLED_SAMPLE.read_text()) == real_header()


@pytest.fixture
def seeded(ifs_sim):
    ifs_sim.state.seed(customers=20, orders=120, seed=7)
    return ifs_sim


def test_seeded_order_has_exactly_the_real_header_fields_plus_custom_attributes(seeded):
    sample = real_header()
    response = requests.get(
        f"{seeded.orders_url}(OrderNo='C1000000001')", headers=seeded.headers(), timeout=10
    )
    assert response.status_code == 200
    order = response.json()
    order.pop("@odata.context")
    assert set(order) == set(sample) | CUSTOM_FIELDS
    # Envelope comes first, in IFS's order.
    envelope = ["@odata.etag", "luname", "keyref", "Objstate", "Objgrants", "OrderNo"]
    assert list(order)[:6] == envelope


def test_seeded_order_values_have_the_real_formats(seeded):
    sample = real_header()
    for order_no in seeded.state.keys(customer_order()):
        order = seeded.state.get_order(order_no)
        assert order["luname"] == "CustomerOrder"
        assert order["keyref"] == f"ORDER_NO={order_no}^"
        assert order["Objgrants"] is None
        assert order["Objstate"] in STATES
        assert re.fullmatch(r"C1\d{9}", order_no)
        assert DATE.match(order["DateEntered"])
        for name in ("OrderCreationDate", "WantedDeliveryDate", "PlannedDeliveryDate"):
            assert TIMESTAMP.match(order[name]), name
        assert isinstance(order["TotalAmount"], float) and order["TotalAmount"] > 0
        assert re.fullmatch(r"CC-\d{4}", order["Cf_Cost_Center"])
        assert re.fullmatch(r"PC-\d{3}", order["Cf_Profit_Center"])
        assert order["Cf_Crm_Stage"] is None
        customer = seeded.state.get_customer(order["CustomerNo"])
        assert order["CustomerName"] == customer["Name"]
        for name, value in sample.items():
            if value is not None and order[name] is not None and name != "TotalAmount":
                assert type(order[name]) is type(value), name


def test_etag_decodes_to_objid_and_objversion_stamp(seeded):
    order = seeded.state.get_order("C1000000005")
    inner = decode_etag(order["@odata.etag"])
    assert re.fullmatch(r'W/"[A-Za-z0-9+/]{18}:\d{14}"', inner)
    objid, objversion = parse_etag(order["@odata.etag"])
    assert len(objid) == 18 and objversion.startswith("20")


def test_real_sample_etag_parses_the_same_way():
    objid, objversion = parse_etag(real_header()["@odata.etag"])
    assert (objid, objversion) == ("AAAZI2AAhAAA5vTAAA", "20251008171610")


def test_seeded_customer_fields(seeded):
    customer = seeded.state.get_customer("C00001")
    assert list(customer)[:4] == ["@odata.etag", "luname", "keyref", "Objgrants"]
    assert customer["luname"] == "CustomerInfo"
    assert customer["keyref"] == "CUSTOMER_ID=C00001^"
    assert re.fullmatch(r"[A-Z]{2}", customer["Country"])
    assert DATE.match(customer["CreationDate"])
    assert customer["PartyType"] == "Customer" and customer["B2bCustomer"] is False
    assert customer["Cf_Region"] and customer["Cf_Cost_Center"].startswith("CC-")
    assert "Objstate" not in customer


def test_same_seed_gives_same_data_and_other_seed_differs():
    first, second, third = (create_app().extensions["ifs_sim"] for _ in range(3))
    first.seed(10, 50, seed=3)
    second.seed(10, 50, seed=3)
    third.seed(10, 50, seed=4)
    assert first.get_order("C1000000042") == second.get_order("C1000000042")
    assert first.get_customer("C00007") == second.get_customer("C00007")
    assert first.get_order("C1000000042") != third.get_order("C1000000042")


def test_seed_covers_every_state_and_references_seeded_customers(seeded):

    orders = [seeded.state.get_order(no) for no in seeded.state.keys(customer_order())]
    assert {o["Objstate"] for o in orders} == STATES
    customers = set(seeded.state.keys(customer_info()))
    assert {o["CustomerNo"] for o in orders} <= customers
