"""OData v4 system query options as IFS's Olingo accepts them: a recursive-descent `$filter`
parser with type checks, plus `$select`, `$orderby`, `$top`, `$skip` and `$count`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from simulators.ifs.errors import IfsError, property_not_found, syntax_error, unsupported
from simulators.ifs.schema import BOOLEAN, DATE, DATETIME, DECIMAL, STRING, EntityType

NULL = "null"
Row = Mapping[str, Any]
Evaluator = Callable[[Row], Any]

_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_ARITHMETIC = {"add", "sub", "mul", "div", "divby", "mod"}
_STRING_PREDICATES = {"contains", "startswith", "endswith"}
_STRING_TRANSFORMS = {"tolower", "toupper", "trim"}
_SUPPORTED_FUNCTIONS = _STRING_PREDICATES | _STRING_TRANSFORMS | {"length", "concat"}

_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,12})?)?(?:Z|[+-]\d{2}:\d{2})"
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\dT:])")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Token:
    kind: str  # literal, ident, enum, "(", ")", ",", "/", ":", eof
    text: str
    pos: int  # 0-based offset in the expression
    value: Any = None
    type: str = NULL


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text

    def tokens(self) -> list[Token]:
        text, pos, out = self.text, 0, []
        while True:
            ws = _WS_RE.match(text, pos)
            if ws:
                pos = ws.end()
            if pos >= len(text):
                out.append(Token("eof", "", pos))
                return out
            token = self._next(pos)
            out.append(token)
            pos = token.pos + len(token.text)

    def _next(self, pos: int) -> Token:
        text = self.text
        char = text[pos]
        if char in "(),/:":
            return Token(char, char, pos)
        if char == "'":
            quoted, end = self._quoted(pos)
            return Token("literal", text[pos:end], pos, quoted, STRING)
        for regex, kind in ((_DATETIME_RE, DATETIME), (_DATE_RE, DATE)):
            found = regex.match(text, pos)
            if found:
                temporal = _parse_temporal(found.group(), kind, pos, text)
                return Token("literal", found.group(), pos, temporal, kind)
        found = _NUMBER_RE.match(text, pos)
        if found:
            return Token("literal", found.group(), pos, float(found.group()), DECIMAL)
        found = _IDENT_RE.match(text, pos)
        if found:
            word = found.group()
            end = found.end()
            if end < len(text) and text[end] == "'":
                value, quote_end = self._quoted(end)
                return Token("enum", text[pos:quote_end], pos, (word, value))
            if word in ("true", "false"):
                return Token("literal", word, pos, word == "true", BOOLEAN)
            if word == "null":
                return Token("literal", word, pos, None, NULL)
            return Token("ident", word, pos)
        raise syntax_error(text, pos)

    def _quoted(self, start: int) -> tuple[str, int]:
        """Read a '...' literal from `start`; '' is an escaped quote. Returns (value, end)."""
        text, pos, parts = self.text, start + 1, []
        while pos < len(text):
            if text[pos] == "'":
                if pos + 1 < len(text) and text[pos + 1] == "'":
                    parts.append("'")
                    pos += 2
                    continue
                return "".join(parts), pos + 1
            parts.append(text[pos])
            pos += 1
        raise syntax_error(text, start)


def _parse_temporal(literal: str, kind: str, pos: int, text: str) -> date | datetime:
    try:
        if kind == DATE:
            return date.fromisoformat(literal)
        return datetime.fromisoformat(literal.replace("Z", "+00:00"))
    except ValueError:
        raise syntax_error(text, pos) from None


def coerce(value: Any, edm_type: str) -> Any:
    """A stored JSON value as the comparable Python value of its Edm type."""
    if value is None:
        return None
    if edm_type == DATE:
        return date.fromisoformat(value)
    if edm_type == DATETIME:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if edm_type == DECIMAL:
        return float(value)
    return value


def _types_not_compatible(left: str, right: str) -> IfsError:
    return IfsError(
        400, "TYPES_NOT_COMPATIBLE", f"The types '{left}' and '{right}' are not compatible."
    )


@dataclass(frozen=True)
class Expr:
    """A type-checked expression: its Edm type and how to evaluate it against a row."""

    type: str
    evaluate: Evaluator
    is_enum: bool = False
    is_literal: bool = False


class FilterParser:
    """Recursive descent over the tokens; every node is type-checked while it is built.

    Precedence (OData ABNF): primary/unary `not` > comparison > `and` > `or`.
    Null semantics follow the SQL IFS runs: a comparison with a null is unknown (None),
    except `eq null`/`ne null`, which are IS NULL/IS NOT NULL; unknown rows are dropped.
    """

    def __init__(self, text: str, entity: EntityType) -> None:
        self.text = text
        self.entity = entity
        self.tokens = _Tokenizer(text).tokens()
        self.index = 0

    # -- token helpers
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def _advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _is_word(self, *words: str) -> bool:
        return self.current.kind == "ident" and self.current.text in words

    def _expect(self, kind: str) -> Token:
        if self.current.kind != kind:
            raise syntax_error(self.text, self.current.pos)
        return self._advance()

    # -- grammar
    def parse(self) -> Evaluator:
        if self.current.kind == "eof":
            raise syntax_error(self.text, 0)
        expr = self._or()
        if self.current.kind != "eof":
            self._reject_operator()
            raise syntax_error(self.text, self.current.pos)
        if expr.type not in (BOOLEAN, NULL):
            raise _types_not_compatible(expr.type, BOOLEAN)
        return expr.evaluate

    def _reject_operator(self) -> None:
        token = self.current
        if token.kind != "ident":
            return
        if token.text == "has":
            raise unsupported("The 'has' operator is not supported.")
        if token.text == "in":
            raise unsupported("The 'in' operator is not supported.")
        if token.text in _ARITHMETIC:
            raise unsupported(f"The arithmetic operator '{token.text}' is not supported.")

    def _or(self) -> Expr:
        left = self._and()
        while self._is_word("or"):
            self._advance()
            right = self._and()
            left = self._logical("or", left, right)
        return left

    def _and(self) -> Expr:
        left = self._comparison()
        while self._is_word("and"):
            self._advance()
            right = self._comparison()
            left = self._logical("and", left, right)
        return left

    def _comparison(self) -> Expr:
        left = self._unary()
        while True:
            self._reject_operator()
            if not self._is_word(*_COMPARISONS):
                return left
            operator = self._advance().text
            token = self.current
            if token.kind == "ident" and token.text not in self.entity.properties:
                following = self.tokens[self.index + 1]
                if following.kind != "(" and token.text != "not":
                    # IFS reports `Contract eq ILER2` (an unquoted value) as a syntax error.
                    raise syntax_error(self.text, token.pos)
            right = self._unary()
            left = self._compare(operator, left, right)

    def _unary(self) -> Expr:
        if self._is_word("not"):
            self._advance()
            operand = self._unary()
            self._require_boolean(operand)
            inner = operand.evaluate

            def negate(row: Row) -> Any:
                value = inner(row)
                return None if value is None else not value

            return Expr(BOOLEAN, negate)
        return self._primary()

    def _primary(self) -> Expr:
        token = self.current
        if token.kind == "(":
            self._advance()
            inner = self._or()
            self._expect(")")
            return inner
        if token.kind == "literal":
            self._advance()
            value = token.value
            return Expr(token.type, lambda _row: value, is_literal=True)
        if token.kind == "enum":
            self._advance()
            return self._enum_literal(token)
        if token.kind == "ident":
            if token.text in _COMPARISONS | {"and", "or"}:
                raise syntax_error(self.text, token.pos)
            self._advance()
            if self.current.kind == "(":
                return self._call(token)
            if self.current.kind == "/":
                raise unsupported(
                    "Navigation paths and the lambda operators any/all are not supported."
                )
            return self._property(token)
        raise syntax_error(self.text, token.pos)

    def _enum_literal(self, token: Token) -> Expr:
        type_name, member = token.value
        enum_types = {t for t in self.entity.properties.values() if t.startswith("IfsApp.")}
        if type_name not in enum_types:
            raise IfsError(
                400, "UNKNOWN_TYPE", f"The type of the literal '{token.text}' is unknown."
            )
        if member not in self.entity.enum_members(type_name):
            raise IfsError(
                400,
                "WRONG_ENUM_VALUE",
                f"The value '{member}' is not a member of the enumeration type '{type_name}'.",
            )
        return Expr(type_name, lambda _row: member, is_enum=True)

    def _property(self, token: Token) -> Expr:
        name = token.text
        edm_type = self.entity.properties.get(name)
        if edm_type is None:
            raise property_not_found(name, self.entity.name)

        def read(row: Row) -> Any:
            return coerce(row.get(name), edm_type)

        return Expr(edm_type, read, is_enum=edm_type.startswith("IfsApp."))

    def _call(self, name_token: Token) -> Expr:
        name = name_token.text
        if name in ("any", "all"):
            raise unsupported("The lambda operators any/all are not supported.")
        if name not in _SUPPORTED_FUNCTIONS:
            raise IfsError(400, "FUNCTION_NOT_FOUND", f"The function '{name}' is not supported.")
        self._expect("(")
        args = [self._or()]
        while self.current.kind == ",":
            self._advance()
            args.append(self._or())
        self._expect(")")
        arity = 2 if name in _STRING_PREDICATES or name == "concat" else 1
        if len(args) != arity:
            raise IfsError(
                400,
                "FUNCTION_NOT_FOUND",
                f"The function '{name}' takes {arity} parameter(s), not {len(args)}.",
            )
        for arg in args:
            if arg.type not in (STRING, NULL):
                raise _types_not_compatible(arg.type, STRING)
        evaluators = [arg.evaluate for arg in args]
        if name in _STRING_PREDICATES:
            method: Callable[[str, str], bool] = {
                "contains": lambda a, b: b in a,
                "startswith": lambda a, b: a.startswith(b),
                "endswith": lambda a, b: a.endswith(b),
            }[name]
            return Expr(BOOLEAN, _apply(method, evaluators))
        if name == "concat":
            return Expr(STRING, _apply(lambda a, b: a + b, evaluators))
        if name == "length":
            return Expr(DECIMAL, _apply(lambda a: float(len(a)), evaluators))
        transform: Callable[[str], str] = {
            "tolower": lambda a: a.lower(),
            "toupper": lambda a: a.upper(),
            "trim": lambda a: a.strip(),
        }[name]
        return Expr(STRING, _apply(transform, evaluators))

    # -- typed node builders
    def _require_boolean(self, expr: Expr) -> None:
        if expr.type not in (BOOLEAN, NULL):
            raise _types_not_compatible(expr.type, BOOLEAN)

    def _logical(self, operator: str, left: Expr, right: Expr) -> Expr:
        self._require_boolean(left)
        self._require_boolean(right)
        lhs, rhs = left.evaluate, right.evaluate

        def conjunction(row: Row) -> Any:
            a, b = lhs(row), rhs(row)
            if a is False or b is False:
                return False
            return None if a is None or b is None else True

        def disjunction(row: Row) -> Any:
            a, b = lhs(row), rhs(row)
            if a is True or b is True:
                return True
            return None if a is None or b is None else False

        return Expr(BOOLEAN, conjunction if operator == "and" else disjunction)

    def _compare(self, operator: str, left: Expr, right: Expr) -> Expr:
        self._check_comparable(operator, left, right)
        lhs, rhs = left.evaluate, right.evaluate
        as_datetime = DATETIME in (left.type, right.type)
        null_test = NULL in (left.type, right.type) and operator in ("eq", "ne")

        def compare(row: Row) -> Any:
            a, b = lhs(row), rhs(row)
            if null_test:
                same = a is None and b is None
                if operator == "eq":
                    return same or (a is not None and b is not None and a == b)
                return not same and not (a is not None and b is not None and a == b)
            if a is None or b is None:
                return None
            if as_datetime:
                a, b = _as_datetime(a), _as_datetime(b)
            return _COMPARE[operator](a, b)

        return Expr(BOOLEAN, compare)

    def _check_comparable(self, operator: str, left: Expr, right: Expr) -> None:
        a, b = left.type, right.type
        if NULL in (a, b):
            return
        if left.is_enum or right.is_enum:
            if a != b:
                raise _types_not_compatible(a, b)
            if operator not in ("eq", "ne"):
                raise _types_not_compatible(a, b)
            return
        if a == b:
            return
        # A Date literal is promoted to midnight UTC against a DateTimeOffset property;
        # a DateTimeOffset literal against a Date property is refused.
        date_side = left if a == DATE else right
        if {a, b} == {DATE, DATETIME} and date_side.is_literal:
            return
        raise _types_not_compatible(a, b)


def _as_datetime(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _apply(function: Callable[..., Any], evaluators: list[Evaluator]) -> Evaluator:
    def call(row: Row) -> Any:
        values = [evaluate(row) for evaluate in evaluators]
        if any(value is None for value in values):
            return None
        return function(*values)

    return call


def parse_filter(text: str, entity: EntityType) -> Evaluator:
    """Compile `$filter`; the evaluator returns True, False or None (unknown) per row."""
    return FilterParser(text, entity).parse()


def parse_select(text: str, entity: EntityType) -> list[str] | None:
    """`$select` → property names in the order given; None means all (`*`)."""
    names = [part.strip() for part in text.split(",")]
    if any(not name for name in names):
        raise syntax_error(text, text.find(",,") + 1 if ",," in text else len(text))
    if "*" in names:
        return None
    for name in names:
        if not _IDENT_RE.fullmatch(name) or "." in name:
            raise syntax_error(text, text.find(name))
        if name not in entity.properties:
            raise property_not_found(name, entity.name)
    return list(dict.fromkeys(names))


def parse_orderby(text: str, entity: EntityType) -> list[tuple[str, bool]]:
    """`$orderby` → [(property, descending)]."""
    items: list[tuple[str, bool]] = []
    offset = 0
    for part in text.split(","):
        words = part.split()
        position = offset
        offset += len(part) + 1
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise syntax_error(text, position)
        name = words[0]
        if not _IDENT_RE.fullmatch(name) or "." in name:
            raise syntax_error(text, position)
        if name not in entity.properties:
            raise property_not_found(name, entity.name)
        items.append((name, len(words) == 2 and words[1] == "desc"))
    return items


def parse_count(text: str) -> bool:
    if text not in ("true", "false"):
        raise _wrong_value("$count", text)
    return text == "true"


def parse_non_negative(option: str, text: str) -> int:
    if not text.isdigit():
        raise _wrong_value(option, text)
    return int(text)


def _wrong_value(option: str, text: str) -> IfsError:
    return unsupported(f"The system query option '{option}' has the not-allowed value '{text}'.")


def sort_rows(
    rows: list[dict[str, Any]], orderby: list[tuple[str, bool]], entity: EntityType
) -> list[dict[str, Any]]:
    """Stable multi-key sort; nulls last ascending and first descending, as Oracle does."""
    ordered = list(rows)
    for name, descending in reversed(orderby):
        edm_type = entity.properties[name]

        def key(row: dict[str, Any], name: str = name, edm_type: str = edm_type) -> tuple[int, Any]:
            value = coerce(row.get(name), edm_type)
            return (1, 0) if value is None else (0, value)

        ordered.sort(key=key, reverse=descending)
    return ordered
