"""OData v4 query building for IFS: typed literals and expressions, never pasted strings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal as TypingLiteral
from typing import Union

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUALIFIED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


def identifier(name: str) -> str:
    """`name` if it is a property name (optionally a navigation path a/b), else ValueError."""
    parts = name.split("/")
    if not all(_IDENTIFIER.match(part) for part in parts):
        raise ValueError(f"not an OData property name: {name!r}")
    return name


@dataclass(frozen=True)
class EnumLiteral:
    """A typed enum member: `IfsApp.CustomerOrderHandling.CustomerOrderState'Released'`."""

    type_name: str
    member: str

    def __post_init__(self) -> None:
        if not _QUALIFIED.match(self.type_name):
            raise ValueError(f"not a qualified enum type name: {self.type_name!r}")
        if not _IDENTIFIER.match(self.member):
            raise ValueError(f"not an enum member name: {self.member!r}")

    def render(self) -> str:
        return f"{self.type_name}'{self.member}'"


Value = Union[str, int, float, Decimal, bool, None, date, datetime, EnumLiteral]  # noqa: UP007


def literal(value: Value) -> str:
    """The OData literal for a Python value; strings are quoted with '' escaping."""
    if isinstance(value, EnumLiteral):
        return value.render()
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"no OData literal for {value!r}")
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"no OData literal for {value!r}")
        return format(value, "f")
    if isinstance(value, datetime):  # before date: datetime is a date
        if value.tzinfo is None:
            raise ValueError("datetime literals need a time zone (IFS compares DateTimeOffset)")
        text = value.astimezone(UTC).isoformat(timespec="microseconds")
        text = text.replace("+00:00", "Z").replace(".000000Z", "Z")
        return text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no OData literal for {type(value).__name__}")


class Expr:
    """A boolean `$filter` expression; combine with `&`, `|` and `~`."""

    def render(self) -> str:
        raise NotImplementedError

    def __and__(self, other: Expr) -> Expr:
        return and_(self, other)

    def __or__(self, other: Expr) -> Expr:
        return or_(self, other)

    def __invert__(self) -> Expr:
        return not_(self)

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True, eq=False)
class _Comparison(Expr):
    field_name: str
    operator: str
    value: Value

    def render(self) -> str:
        return f"{self.field_name} {self.operator} {literal(self.value)}"


@dataclass(frozen=True, eq=False)
class _Junction(Expr):
    operator: str
    parts: tuple[Expr, ...]

    def render(self) -> str:
        return f" {self.operator} ".join(_grouped(part) for part in self.parts)


@dataclass(frozen=True, eq=False)
class _Not(Expr):
    inner: Expr

    def render(self) -> str:
        return f"not {_grouped(self.inner)}"


@dataclass(frozen=True, eq=False)
class _Call(Expr):
    function: str
    field_name: str
    value: str

    def render(self) -> str:
        return f"{self.function}({self.field_name},{literal(self.value)})"


def _grouped(expr: Expr) -> str:
    text = expr.render()
    return f"({text})" if isinstance(expr, _Junction | _Not) else text


def _name(field_or_name: Field | str) -> str:
    return field_or_name.name if isinstance(field_or_name, Field) else identifier(field_or_name)


def eq(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "eq", value)


def ne(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "ne", value)


def gt(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "gt", value)


def ge(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "ge", value)


def lt(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "lt", value)


def le(name: Field | str, value: Value) -> Expr:
    return _Comparison(_name(name), "le", value)


def contains(name: Field | str, text: str) -> Expr:
    return _Call("contains", _name(name), _text(text))


def startswith(name: Field | str, text: str) -> Expr:
    return _Call("startswith", _name(name), _text(text))


def endswith(name: Field | str, text: str) -> Expr:
    return _Call("endswith", _name(name), _text(text))


def _text(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError("string functions take a str")
    return value


def and_(*parts: Expr) -> Expr:
    return _junction("and", parts)


def or_(*parts: Expr) -> Expr:
    return _junction("or", parts)


def not_(inner: Expr) -> Expr:
    return _Not(inner)


def any_of(name: Field | str, values: Iterable[Value]) -> Expr:
    """`name eq v1 or name eq v2 …` (Olingo in IFS has no `in`)."""
    return or_(*(eq(name, value) for value in values))


def _junction(operator: str, parts: Sequence[Expr]) -> Expr:
    if not parts:
        raise ValueError(f"{operator}_ needs at least one expression")
    flat: list[Expr] = []
    for part in parts:
        if not isinstance(part, Expr):
            raise TypeError(f"{operator}_ takes expressions, got {type(part).__name__}")
        if isinstance(part, _Junction) and part.operator == operator:
            flat.extend(part.parts)
        else:
            flat.append(part)
    return flat[0] if len(flat) == 1 else _Junction(operator, tuple(flat))


class Field:
    """A property in expressions: `Field("Objstate") == EnumLiteral(...)`, `Field("X") >= 3`."""

    __slots__ = ("name",)
    __hash__ = None  # type: ignore[assignment]  # == builds an expression, so no hashing

    def __init__(self, name: str) -> None:
        self.name = identifier(name)

    def __eq__(self, value: Value) -> Expr:  # type: ignore[override]
        return eq(self, value)

    def __ne__(self, value: Value) -> Expr:  # type: ignore[override]
        return ne(self, value)

    def __gt__(self, value: Value) -> Expr:
        return gt(self, value)

    def __ge__(self, value: Value) -> Expr:
        return ge(self, value)

    def __lt__(self, value: Value) -> Expr:
        return lt(self, value)

    def __le__(self, value: Value) -> Expr:
        return le(self, value)

    def contains(self, text: str) -> Expr:
        return contains(self, text)

    def startswith(self, text: str) -> Expr:
        return startswith(self, text)

    def endswith(self, text: str) -> Expr:
        return endswith(self, text)

    def any_of(self, values: Iterable[Value]) -> Expr:
        return any_of(self, values)

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


Direction = TypingLiteral["asc", "desc"]
OrderBy = Union[str, tuple[str, Direction]]  # noqa: UP007


@dataclass(frozen=True)
class Query:
    """The system query options of one collection read, rendered by `params()`."""

    filter: Expr | None = None
    select: Sequence[str] = ()
    orderby: Sequence[OrderBy] = ()
    top: int | None = None
    skip: int | None = None
    count: bool = False

    def __post_init__(self) -> None:
        for name in self.select:
            identifier(name)
        for item in self.orderby:
            _order_term(item)
        for option, value in (("top", self.top), ("skip", self.skip)):
            if value is not None and value < 0:
                raise ValueError(f"${option} must be >= 0, got {value}")

    @property
    def order_names(self) -> list[str]:
        return [item if isinstance(item, str) else item[0] for item in self.orderby]

    def ordered_by(self, *terms: OrderBy) -> Query:
        """This query also ordered by `terms` that it does not order by already."""
        present = set(self.order_names)
        extra = [t for t in terms if (t if isinstance(t, str) else t[0]) not in present]
        return replace(self, orderby=(*self.orderby, *extra))

    def page(self, *, top: int, skip: int) -> Query:
        return replace(self, top=top, skip=skip)

    def params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.filter is not None:
            params["$filter"] = self.filter.render()
        if self.select:
            params["$select"] = ",".join(self.select)
        if self.orderby:
            params["$orderby"] = ",".join(_order_term(item) for item in self.orderby)
        if self.top is not None:
            params["$top"] = str(self.top)
        if self.skip:
            params["$skip"] = str(self.skip)
        if self.count:
            params["$count"] = "true"
        return params


def _order_term(item: OrderBy) -> str:
    if isinstance(item, str):
        return identifier(item)
    name, direction = item
    if direction not in ("asc", "desc"):
        raise ValueError(f"order direction must be asc or desc, got {direction!r}")
    return f"{identifier(name)} {direction}"
