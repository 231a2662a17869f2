"""The OData query builder: literals, expressions and query options, rendered as IFS expects."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from connector.ifs.odata import (
    EnumLiteral,
    Field,
    Query,
    and_,
    any_of,
    contains,
    endswith,
    eq,
    ge,
    gt,
    identifier,
    le,
    literal,
    lt,
    ne,
    not_,
    or_,
    startswith,
)

RELEASED = EnumLiteral("IfsApp.CustomerOrderHandling.CustomerOrderState", "Released")


def test_strings_are_quoted_with_doubled_quotes():
    assert literal("O'Brien") == "'O''Brien'"
    assert literal("a' or 1 eq 1 or 'x") == "'a'' or 1 eq 1 or ''x'"
    assert literal("") == "''"


def test_scalar_literals():
    assert literal(None) == "null"
    assert literal(True) == "true" and literal(False) == "false"
    assert literal(42) == "42"
    assert literal(2.5) == "2.5"
    assert literal(Decimal("1234.50")) == "1234.50"


def test_temporal_literals():
    assert literal(date(2025, 7, 1)) == "2025-07-01"
    assert literal(datetime(2025, 10, 21, 0, 0, tzinfo=UTC)) == "2025-10-21T00:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert literal(datetime(2025, 10, 21, 2, 0, 0, 500, tzinfo=plus_two)) == (
        "2025-10-21T00:00:00.000500Z"
    )
    with pytest.raises(ValueError, match="time zone"):
        literal(datetime(2025, 1, 1))


def test_enum_literal():
    assert literal(RELEASED) == "IfsApp.CustomerOrderHandling.CustomerOrderState'Released'"
    with pytest.raises(ValueError):
        EnumLiteral("CustomerOrderState", "Released")  # must be qualified
    with pytest.raises(ValueError):
        EnumLiteral("IfsApp.X.State", "Rel'eased")


def test_unrenderable_values_are_refused():
    with pytest.raises(ValueError):
        literal(float("nan"))
    with pytest.raises(TypeError):
        literal(object())  # type: ignore[arg-type]


def test_field_operators():
    assert str(Field("Objstate") == RELEASED) == (
        "Objstate eq IfsApp.CustomerOrderHandling.CustomerOrderState'Released'"
    )
    assert str(Field("CustomerId") == "O'Brien") == "CustomerId eq 'O''Brien'"
    assert str(Field("TotalAmount") >= 100) == "TotalAmount ge 100"
    assert str(Field("TotalAmount") > 1) == "TotalAmount gt 1"
    assert str(Field("TotalAmount") < 1) == "TotalAmount lt 1"
    assert str(Field("TotalAmount") <= 1) == "TotalAmount le 1"
    assert str(Field("Cf_Region") != None) == "Cf_Region ne null"  # noqa: E711
    assert str(Field("Name").contains("a'b")) == "contains(Name,'a''b')"
    assert str(Field("Name").startswith("AC")) == "startswith(Name,'AC')"


def test_functions_match_operators():
    assert eq("A", 1).render() == "A eq 1"
    assert ne("A", 1).render() == "A ne 1"
    assert gt("A", 1).render() == "A gt 1"
    assert ge("DateEntered", date(2025, 1, 1)).render() == "DateEntered ge 2025-01-01"
    assert lt("A", 1).render() == "A lt 1"
    assert le("A", 1).render() == "A le 1"
    assert contains("Name", "x").render() == "contains(Name,'x')"
    assert startswith("Name", "x").render() == "startswith(Name,'x')"
    assert endswith("Name", "x").render() == "endswith(Name,'x')"


def test_boolean_combinations_are_grouped():
    a, b, c = eq("A", 1), eq("B", 2), eq("C", 3)
    assert and_(a, b).render() == "A eq 1 and B eq 2"
    assert and_(a, or_(b, c)).render() == "A eq 1 and (B eq 2 or C eq 3)"
    assert or_(and_(a, b), c).render() == "(A eq 1 and B eq 2) or C eq 3"
    assert and_(and_(a, b), c).render() == "A eq 1 and B eq 2 and C eq 3"
    assert not_(or_(a, b)).render() == "not (A eq 1 or B eq 2)"
    assert not_(a).render() == "not A eq 1"
    assert ((a & b) | ~c).render() == "(A eq 1 and B eq 2) or (not C eq 3)"
    assert and_(a).render() == "A eq 1"
    with pytest.raises(ValueError):
        and_()
    with pytest.raises(TypeError):
        and_("A eq 1")  # type: ignore[arg-type]


def test_any_of_is_an_or_of_equalities():
    assert any_of("Objstate", ["Planned", "Released"]).render() == (
        "Objstate eq 'Planned' or Objstate eq 'Released'"
    )


@pytest.mark.parametrize(
    "name", ["", "1abc", "Name eq 'x'", "a b", "Name)", "Name,Other", "x/", "$top"]
)
def test_field_names_must_be_identifiers(name: str):
    with pytest.raises(ValueError):
        Field(name)
    with pytest.raises(ValueError):
        eq(name, 1)
    with pytest.raises(ValueError):
        Query(select=[name])
    with pytest.raises(ValueError):
        Query(orderby=[name])


def test_navigation_paths_are_identifiers():
    assert identifier("CustomerInfo/Name") == "CustomerInfo/Name"


def test_query_params():
    query = Query(
        filter=(Field("Objstate") == RELEASED) & (Field("TotalAmount") >= 10),
        select=["OrderNo", "Objstate"],
        orderby=["OrderNo", ("DateEntered", "desc")],
        top=50,
        skip=100,
        count=True,
    )
    assert query.params() == {
        "$filter": "Objstate eq IfsApp.CustomerOrderHandling.CustomerOrderState'Released' "
        "and TotalAmount ge 10",
        "$select": "OrderNo,Objstate",
        "$orderby": "OrderNo,DateEntered desc",
        "$top": "50",
        "$skip": "100",
        "$count": "true",
    }
    assert Query().params() == {}


def test_query_paging_and_ordering_helpers():
    query = Query(orderby=[("DateEntered", "desc")]).ordered_by("OrderNo", "DateEntered")
    assert query.params()["$orderby"] == "DateEntered desc,OrderNo"
    page = query.page(top=10, skip=20)
    assert page.params()["$top"] == "10" and page.params()["$skip"] == "20"
    with pytest.raises(ValueError):
        Query(top=-1)
    with pytest.raises(ValueError):
        Query(orderby=[("OrderNo", "sideways")])  # type: ignore[list-item]
