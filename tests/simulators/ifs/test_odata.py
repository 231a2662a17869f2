"""OData query options as IFS's Olingo serves them: $filter, $select, $orderby, paging."""

from __future__ import annotations

import pytest
import requests

from simulators.ifs.errors import IfsError
from simulators.ifs.odata import parse_filter
from simulators.ifs.schema import customer_order

ENUM = "IfsApp.CustomerOrderHandling.CustomerOrderState"


@pytest.fixture
def orders(ifs_sim):
    """Five hand-made orders so every expected result is known."""
    ifs_sim.state.insert_customer({"CustomerId": "C00001", "Name": "Atlantic Marine SAS"})
    rows = [
        ("C1000000001", "Released", "O'Brien Yachts", 1000.5, "2025-06-30", "EUR", None),
        ("C1000000002", "Planned", "Atlantic Marine SAS", 250000.0, "2025-07-01", "EUR", "RETAIL"),
        ("C1000000003", "Released", "atlantic trading", 99.0, "2025-07-15", "USD", "DEALER"),
        ("C1000000004", "Cancelled", "Nordic Nautic AB", 5000.0, "2025-08-01", "SEK", None),
        ("C1000000005", "Invoiced", "Baltic Charter AS", 5000.0, "2025-09-01", "NOK", "FLEET"),
    ]
    for no, state, name, amount, entered, currency, market in rows:
        ifs_sim.state.insert_order(
            {
                "OrderNo": no,
                "Objstate": state,
                "CustomerNo": "C00001",
                "CustomerName": name,
                "TotalAmount": amount,
                "DateEntered": entered,
                "OrderCreationDate": f"{entered}T10:00:00Z",
                "CurrencyCode": currency,
                "MarketCode": market,
            }
        )
    return ifs_sim


def query(sim, headers=None, **params):
    options = {f"${k}": v for k, v in params.items()}
    headers = headers or sim.headers()
    return requests.get(sim.orders_url, params=options, headers=headers, timeout=10)


def numbers(response):
    assert response.status_code == 200, response.text
    return [row["OrderNo"][-1] for row in response.json()["value"]]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("OrderNo eq 'C1000000002'", ["2"]),
        ("OrderNo ne 'C1000000002'", ["1", "3", "4", "5"]),
        ("TotalAmount gt 5000", ["2"]),
        ("TotalAmount ge 5000", ["2", "4", "5"]),
        ("TotalAmount lt 1000.5", ["3"]),
        ("TotalAmount le 1000.5", ["1", "3"]),
        ("CurrencyCode eq 'EUR' and TotalAmount gt 2000", ["2"]),
        ("CurrencyCode eq 'USD' or CurrencyCode eq 'SEK'", ["3", "4"]),
        ("not (CurrencyCode eq 'EUR')", ["3", "4", "5"]),
        ("(CurrencyCode eq 'EUR' or CurrencyCode eq 'USD') and TotalAmount lt 2000", ["1", "3"]),
        (f"Objstate eq {ENUM}'Released'", ["1", "3"]),
        (f"Objstate ne {ENUM}'Released'", ["2", "4", "5"]),
        ("DateEntered ge 2025-07-01", ["2", "3", "4", "5"]),
        ("DateEntered lt 2025-07-01", ["1"]),
        ("OrderCreationDate gt 2025-07-15T09:59:59Z", ["3", "4", "5"]),
        ("OrderCreationDate ge 2025-08-01", ["4", "5"]),
        ("CustomerName eq 'O''Brien Yachts'", ["1"]),
        ("contains(CustomerName,'Marine')", ["2"]),
        ("startswith(CustomerName,'Nordic')", ["4"]),
        ("endswith(CustomerName,'AS')", ["2", "5"]),
        ("tolower(CustomerName) eq 'atlantic trading'", ["3"]),
        ("startswith(toupper(CustomerName),'ATLANTIC')", ["2", "3"]),
        ("MarketCode eq null", ["1", "4"]),
        ("MarketCode ne null", ["2", "3", "5"]),
        ("MarketCode ne 'RETAIL'", ["3", "5"]),
        ("not contains(CustomerName,'Marine')", ["1", "3", "4", "5"]),
        ("DopConnectionExists eq true or DopConnectionExists eq false", ["1", "2", "3", "4", "5"]),
    ],
)
def test_filter_semantics(orders, expression, expected):
    assert sorted(numbers(query(orders, filter=expression))) == expected


@pytest.mark.parametrize(
    ("expression", "code"),
    [
        ("OrderNo eq", "ODP_UNSUPPORTED_URL"),
        ("OrderNo eq 'open", "ODP_UNSUPPORTED_URL"),
        ("(OrderNo eq 'x'", "ODP_UNSUPPORTED_URL"),
        ("OrderNo eq 'x')", "ODP_UNSUPPORTED_URL"),
        ("OrderNo 'x'", "ODP_UNSUPPORTED_URL"),
        ("OrderNo eq 'x' and", "ODP_UNSUPPORTED_URL"),
        ("OrderNo eq #", "ODP_UNSUPPORTED_URL"),
        ("", "ODP_UNSUPPORTED_URL"),
        ("Nope eq 1", "EXPRESSION_PROPERTY_NOT_IN_TYPE"),
        ("Objstate eq 'Released'", "TYPES_NOT_COMPATIBLE"),
        ("Objstate eq IfsApp.Wrong.CustomerOrderState'Released'", "UNKNOWN_TYPE"),
        (f"Objstate eq {ENUM}'Shipped'", "WRONG_ENUM_VALUE"),
        (f"Objstate gt {ENUM}'Planned'", "TYPES_NOT_COMPATIBLE"),
        ("TotalAmount eq 'x'", "TYPES_NOT_COMPATIBLE"),
        ("DateEntered ge 2025-07-01T00:00:00Z", "TYPES_NOT_COMPATIBLE"),
        ("OrderNo", "TYPES_NOT_COMPATIBLE"),
        ("not OrderNo eq 'x'", "TYPES_NOT_COMPATIBLE"),
        ("contains(TotalAmount,'1')", "TYPES_NOT_COMPATIBLE"),
        ("contains(OrderNo)", "FUNCTION_NOT_FOUND"),
        ("substringof('a',OrderNo)", "FUNCTION_NOT_FOUND"),
        ("year(DateEntered) eq 2025", "FUNCTION_NOT_FOUND"),
        ("Lines/any(l: l/PartNo eq 'x')", "ODP_UNSUPPORTED_URL"),
        ("any(x)", "ODP_UNSUPPORTED_URL"),
        (f"Objstate has {ENUM}'Released'", "ODP_UNSUPPORTED_URL"),
        ("OrderNo in ('a','b')", "ODP_UNSUPPORTED_URL"),
        ("TotalAmount add 1 gt 2", "ODP_UNSUPPORTED_URL"),
        ("DateEntered ge 2025-13-45", "ODP_UNSUPPORTED_URL"),
    ],
)
def test_unsupported_or_malformed_filters_are_400_with_ifs_error_body(orders, expression, code):
    response = query(orders, filter=expression)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_syntax_error_message_names_position_and_text():
    with pytest.raises(IfsError) as caught:
        parse_filter("Contract eq ILER2", customer_order())
    # The exact text a real IFS Cloud answered for this filter.
    assert caught.value.message == (
        "Malformed Request: syntax error at position 12 in 'Contract eq ILER2'."
    )
    with pytest.raises(IfsError) as caught:
        parse_filter("ILER2 eq Contract", customer_order())
    assert caught.value.code == "EXPRESSION_PROPERTY_NOT_IN_TYPE"


def test_filter_parser_survives_garbage_without_crashing():
    for text in ["'", "((((", "eq eq eq", "not", "a,b", "contains(", "1 eq 1)", "''''", "\x00"]:
        with pytest.raises(IfsError) as caught:
            parse_filter(text, customer_order())
        assert caught.value.status == 400


def test_select_returns_etag_and_chosen_properties_only(orders):
    response = query(orders, select="OrderNo,TotalAmount", filter="OrderNo eq 'C1000000001'")
    body = response.json()
    assert body["@odata.context"].endswith("$metadata#CustomerOrderSet(OrderNo,TotalAmount)")
    assert body["value"] == [
        {
            "@odata.etag": orders.state.get_order("C1000000001")["@odata.etag"],
            "OrderNo": "C1000000001",
            "TotalAmount": 1000.5,
        }
    ]


def test_select_unknown_property_is_400(orders):
    response = query(orders, select="OrderNo,CustomerNameX")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "EXPRESSION_PROPERTY_NOT_IN_TYPE",
            "message": "The property 'CustomerNameX' is not found in type CustomerOrder.",
        }
    }


def test_orderby_multiple_keys_and_directions(orders):
    response = query(orders, orderby="TotalAmount desc,OrderNo desc")
    assert numbers(response) == ["2", "5", "4", "1", "3"]
    response = query(orders, orderby="CurrencyCode asc, TotalAmount asc")
    assert numbers(response) == ["1", "2", "5", "4", "3"]
    # Nulls last ascending, first descending (Oracle).
    assert numbers(query(orders, orderby="MarketCode"))[-2:] == ["1", "4"]
    assert numbers(query(orders, orderby="MarketCode desc"))[:2] == ["1", "4"]


def test_orderby_rejects_unknown_property_and_bad_direction(orders):
    assert query(orders, orderby="Nope").status_code == 400
    assert query(orders, orderby="OrderNo sideways").status_code == 400


def test_top_skip_and_count(orders):
    response = query(orders, orderby="OrderNo", top="2", skip="1", count="true")
    assert numbers(response) == ["2", "3"]
    assert response.json()["@odata.count"] == 5
    assert "@odata.count" not in query(orders).json()
    filtered = query(orders, filter="CurrencyCode eq 'EUR'", count="true", top="1")
    assert filtered.json()["@odata.count"] == 2
    for bad in ({"top": "-1"}, {"skip": "x"}, {"count": "yes"}, {"expand": "Lines"}, {"foo": "1"}):
        assert query(orders, **bad).status_code == 400


def test_collection_envelope(orders):
    body = query(orders).json()
    assert body["@odata.context"].endswith(
        "/main/ifsapplications/projection/v1/CustomerOrderHandling.svc/$metadata#CustomerOrderSet"
    )
    assert len(body["value"]) == 5 and "@odata.nextLink" not in body


def test_maxpagesize_pages_with_next_link_until_done(ifs_sim):
    ifs_sim.state.seed(customers=5, orders=23, seed=1)
    headers = ifs_sim.headers(Prefer="odata.maxpagesize=10")
    response = requests.get(
        ifs_sim.orders_url,
        params={"$select": "OrderNo", "$orderby": "OrderNo", "$count": "true"},
        headers=headers,
        timeout=10,
    )
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=10"
    seen, pages = [], 0
    while True:
        body = response.json()
        assert body["@odata.count"] == 23
        seen += [row["OrderNo"] for row in body["value"]]
        pages += 1
        if "@odata.nextLink" not in body:
            break
        response = requests.get(body["@odata.nextLink"], headers=headers, timeout=10)
    assert pages == 3
    assert seen == sorted(seen) and len(set(seen)) == 23


def test_paging_respects_filter_and_top(orders):
    headers = orders.headers(Prefer="odata.maxpagesize=1")
    params = {"$filter": "TotalAmount gt 100", "$top": "3", "$orderby": "OrderNo"}
    response = requests.get(orders.orders_url, params=params, headers=headers, timeout=10)
    got = numbers(response)
    while "@odata.nextLink" in response.json():
        response = requests.get(response.json()["@odata.nextLink"], headers=headers, timeout=10)
        got += numbers(response)
    assert got == ["1", "2", "4"]


def test_get_by_key_and_missing_key(orders):
    response = requests.get(
        f"{orders.orders_url}(OrderNo='C1000000003')", headers=orders.headers(), timeout=10
    )
    assert response.status_code == 200
    assert response.json()["@odata.context"].endswith("$metadata#CustomerOrderSet/$entity")
    assert response.headers["ETag"] == response.json()["@odata.etag"]
    missing = requests.get(
        f"{orders.orders_url}(OrderNo='C9')", headers=orders.headers(), timeout=10
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ODP_RESOURCE_NOTFOUND"
    selected = requests.get(
        f"{orders.orders_url}(OrderNo='C1000000003')",
        params={"$select": "CustomerName"},
        headers=orders.headers(),
        timeout=10,
    ).json()
    assert set(selected) == {"@odata.context", "@odata.etag", "CustomerName"}


def test_customer_set_by_key_and_filter(ifs_sim):
    ifs_sim.state.seed(customers=12, orders=0, seed=2)
    headers = ifs_sim.headers()
    one = requests.get(f"{ifs_sim.customers_url}(CustomerId='C00004')", headers=headers, timeout=10)
    assert one.status_code == 200 and one.json()["CustomerId"] == "C00004"
    country = one.json()["Country"]
    listed = requests.get(
        ifs_sim.customers_url,
        params={"$filter": f"Country eq '{country}'", "$select": "CustomerId,Country"},
        headers=headers,
        timeout=10,
    ).json()["value"]
    assert "C00004" in [row["CustomerId"] for row in listed]
    assert {row["Country"] for row in listed} == {country}


def test_unknown_projection_and_entity_set_are_404(ifs_sim):
    headers = ifs_sim.headers()
    unknown_projection = ifs_sim.orders_url.replace("CustomerOrderHandling", "NoSuchHandling")
    response = requests.get(unknown_projection, headers=headers, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "MI_METADATA_NOTFOUND"
    wrong_set = ifs_sim.orders_url.replace("CustomerOrderSet", "CustomerInfoSet")
    assert requests.get(wrong_set, headers=headers, timeout=10).status_code == 404
