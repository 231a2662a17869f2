"""In-memory, thread-safe state of the IFS simulator: entities with objid/objversion, the
customer order state machine, the per-client request budget, faults and request statistics."""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simulators.ifs import seeding
from simulators.ifs.errors import IfsError, database_error, deserialization_error, not_found
from simulators.ifs.odata import coerce
from simulators.ifs.schema import (
    BOOLEAN,
    DATE,
    DATETIME,
    DECIMAL,
    STRING,
    BoundAction,
    EntityType,
    customer_info,
    customer_order,
)

_DATE_PATTERNS = {
    DATE: r"\d{4}-\d{2}-\d{2}",
    DATETIME: r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
}
_LU_PROMPTS = {"CustomerOrder": "Customer Order", "CustomerInfo": "Customer"}


@dataclass
class StoredEntity:
    """One row: `data` is the entity as served, minus `@odata.etag`."""

    data: dict[str, Any]
    objid: str
    objversion: str
    previous_state: str | None = None

    @property
    def etag(self) -> str:
        return make_etag(self.objid, self.objversion)


def make_etag(objid: str, objversion: str) -> str:
    """IFS's weak ETag: W/"<base64 of W/"objid:objversion">"."""
    inner = f'W/"{objid}:{objversion}"'.encode("ascii")
    return f'W/"{base64.b64encode(inner).decode("ascii")}"'


def parse_etag(etag: str) -> tuple[str, str]:
    """(objid, objversion) from an IFS ETag; ValueError when it is not one."""
    found = re.fullmatch(r'W/"([A-Za-z0-9+/=]+)"', etag.strip())
    if not found:
        raise ValueError(f"not an IFS etag: {etag!r}")
    inner = base64.b64decode(found.group(1)).decode("ascii")
    body = re.fullmatch(r'W/"([^:]+):(\d{14})"', inner)
    if not body:
        raise ValueError(f"not an IFS etag: {etag!r}")
    return body.group(1), body.group(2)


def column_name(property_name: str) -> str:
    """`OrderNo` → `ORDER_NO`, the database column IFS names in its messages."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", property_name).upper()


@dataclass
class Faults:
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    latency_ms: int = 0
    force_429: int = 0
    retry_after_s: int = 1
    seed: int | None = None


class IfsSim:
    """The simulated IFS installation. All public methods are safe to call from any thread."""

    def __init__(self, settings: Any) -> None:
        self._initial_settings = settings
        self.settings = settings
        self._lock = threading.RLock()
        # Tokens stay valid across reset() so a session-wide test server can keep its token.
        self.signing_key = secrets.token_bytes(32)
        self.reset()

    # -- lifecycle ----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all data, statistics, faults, budgets and clock skew; keep issued tokens."""
        with self._lock:
            self.settings = self._initial_settings
            self._customers: dict[str, StoredEntity] = {}
            self._orders: dict[str, StoredEntity] = {}
            self._clock_offset = 0.0
            self._windows: dict[str, deque[float]] = {}
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._counters: Counter[str] = Counter()
            self._insert_rng = random.Random(0)
            self._next_order = seeding.FIRST_ORDER_NUMBER
            self._next_customer = 1
            self._edits_after_read: dict[tuple[str, str], dict[str, Any]] = {}
            self.set_faults(
                error_rate=self.settings.error_rate,
                timeout_rate=self.settings.timeout_rate,
                latency_ms=self.settings.latency_ms,
                seed=self.settings.fault_seed,
            )

    def configure(self, **changes: Any) -> None:
        """Change settings at run time (e.g. `token_ttl_s`, `requests_per_minute`) until reset()."""
        with self._lock:
            self.settings = dataclasses.replace(self.settings, **changes)

    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock forward: tokens expire, rate windows slide."""
        with self._lock:
            self._clock_offset += seconds

    # -- seeding and simulated users ----------------------------------------------------
    def seed(self, customers: int, orders: int, seed: int = 42) -> dict[str, int]:
        """Replace all entities with a reproducible set (same seed → same data and ETags)."""
        if customers < 0 or orders < 0:
            raise ValueError("customers and orders must be >= 0")
        if orders and not customers:
            raise ValueError("orders need at least one customer")
        rng = random.Random(seed)
        seeded_customers = seeding.generate_customers(customers, rng)
        seeded_orders = seeding.generate_orders(orders, [c.data for c in seeded_customers], rng)
        with self._lock:
            self._customers = {}
            self._orders = {}
            for record in seeded_customers:
                self._store(
                    self.customer_type, self._keyed(record.data), record.objid, record.objversion
                )
            for record in seeded_orders:
                stored = self._store(customer_order(), record.data, record.objid, record.objversion)
                stored.previous_state = record.previous_state
            self._next_customer = customers + 1
            self._next_order = seeding.FIRST_ORDER_NUMBER + orders
            self._insert_rng = random.Random(seed + 1)
        return {"customers": customers, "orders": orders}

    def insert_customer(self, fields: dict[str, Any], omit: Iterable[str] = ()) -> dict[str, Any]:
        """Add one customer; unspecified fields get realistic values, `omit` drops fields."""
        entity = self.customer_type
        self._check_fields(entity, fields, allow_envelope=False)
        with self._lock:
            rng = self._insert_rng
            template = seeding.generate_customers(1, rng)[0]
            data = self._keyed(template.data)
            data.update(fields)
            if entity.key not in fields:
                data[entity.key] = self._free_customer_id()
            key = str(data[entity.key])
            if key in self._customers:
                raise ValueError(f"customer {key} already exists")
            for name in omit:
                data.pop(name, None)
            stored = self._store(
                entity, data, seeding.make_objid(rng), self._objversion_after(None), key
            )
            return self._render(stored)

    def insert_order(self, fields: dict[str, Any], omit: Iterable[str] = ()) -> dict[str, Any]:
        """Add one order; unspecified fields get realistic values, `omit` drops fields."""
        self._check_fields(customer_order(), fields, allow_envelope=True)
        with self._lock:
            rng = self._insert_rng
            customer_no = fields.get("CustomerNo")
            existing = self._customers.get(str(customer_no)) if customer_no else None
            customer = self._seeded(existing.data) if existing else self._any_customer(customer_no)
            data, previous = seeding.build_order(self._next_order, customer, rng)
            if "OrderNo" not in fields:
                data["OrderNo"] = seeding.order_no(self._next_order)
                data["BusinessObjectId"] = data["OrderNo"]
            self._next_order += 1
            data.update(fields)
            key = str(data["OrderNo"])
            if key in self._orders:
                raise ValueError(f"order {key} already exists")
            for name in omit:
                data.pop(name, None)
            stored = self._store(
                customer_order(), data, seeding.make_objid(rng), self._objversion_after(None), key
            )
            stored.previous_state = previous or None
            return self._render(stored)

    def edit_order(self, order_no: str, **fields: Any) -> dict[str, Any]:
        """A simulated IFS user edits the order: fields change and the ETag moves on."""
        return self._user_edit(customer_order(), order_no, fields)

    def edit_customer(self, customer_id: str, **fields: Any) -> dict[str, Any]:
        """A simulated IFS user edits the customer: fields change and the ETag moves on."""
        return self._user_edit(self.customer_type, customer_id, fields)

    def remove(self, entity: EntityType, key: str) -> None:
        """A simulated IFS user removes the record: reads no longer return it, and a GET by
        key answers 404; KeyError if absent."""
        with self._lock:
            del self._table(entity)[key]

    def edit_order_after_next_read(self, order_no: str, **fields: Any) -> None:
        """An IFS user edits the order right after the next client read of it by key: the
        client's ETag goes stale between its read and its write (a deterministic 412)."""
        with self._lock:
            self.get_order(order_no)  # KeyError for an unknown order
            self._edits_after_read[(customer_order().entity_set, order_no)] = fields

    def after_read(self, entity: EntityType, key: str) -> None:
        """Apply a pending edit-after-read of this record, if one was asked for."""
        with self._lock:
            fields = self._edits_after_read.pop((entity.entity_set, key), None)
            if fields is not None:
                self._user_edit(entity, key, fields)

    def get_order(self, order_no: str) -> dict[str, Any]:
        """The order as `GET CustomerOrderSet(OrderNo='…')` returns it; KeyError if absent."""
        return self.get(customer_order(), order_no)

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        return self.get(self.customer_type, customer_id)

    def get(self, entity: EntityType, key: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self._table(entity)[key])

    def keys(self, entity: EntityType) -> list[str]:
        with self._lock:
            return list(self._table(entity))

    # -- OData reads and writes ----------------------------------------------------------
    def query(self, entity: EntityType, predicate: Any) -> list[tuple[dict[str, Any], str]]:
        """(row, etag) for every entity the compiled `$filter` keeps (all when None).

        The rows are the stored ones, not copies: a page request copies only the rows it
        returns (copying a large table for every page made paging quadratic).
        """
        with self._lock:
            return [
                (stored.data, stored.etag)
                for stored in self._table(entity).values()
                if predicate is None or predicate(stored.data) is True
            ]

    def patch(
        self, entity: EntityType, key: str, if_match: str, changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply a client PATCH under optimistic concurrency; returns the new entity."""
        with self._lock:
            stored = self._locate(entity, key, if_match)
            for name in changes:
                if name in entity.read_only:
                    raise database_error(
                        -20122,
                        entity.name,
                        "UPDATE",
                        f"Field [{column_name(name)}] in {_LU_PROMPTS[entity.name]} "
                        "may not be modified.",
                    )
            stored.data.update(changes)
            self._bump(stored)
            self._counters["writes"] += 1
            return self._render(stored)

    def run_action(
        self, key: str, action: str, if_match: str, parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run a bound state action on an order (Release, Block, …) as its description says."""
        entity = customer_order()
        bound = entity.action(action)
        if bound is None:
            raise not_found()
        given = parameters or {}
        check_action_parameters(entity, bound, given)
        with self._lock:
            stored = self._locate(entity, key, if_match)
            state = stored.data.get("Objstate")
            if state not in bound.allowed_from:
                raise database_error(
                    -20132,
                    entity.name,
                    "NOTHANDLED",
                    f'The operation "{action}" is not allowed for Customer Order "{key}" '
                    f'which is in state "{state}".',
                )
            target = bound.target
            if bound.remembers_state:
                stored.previous_state = state
            if target is None:
                target = stored.previous_state or "Planned"
                stored.previous_state = None
            stored.data.update(bound.sets)
            for parameter in bound.parameters:
                if parameter.stored_in is not None and parameter.name in given:
                    stored.data[parameter.stored_in] = given[parameter.name]
            stored.data["Objstate"] = target
            self._bump(stored)
            self._counters["writes"] += 1
            return self._render(stored)

    # -- budget, faults, statistics -----------------------------------------------------
    def admit(self, client_id: str) -> int | None:
        """Count one API request against the client's per-minute budget.

        Returns None when admitted, else the Retry-After seconds for a 429.
        """
        with self._lock:
            if self._faults.force_429 > 0:
                self._faults.force_429 -= 1
                return self._faults.retry_after_s
            now = self.now()
            window = self._windows.setdefault(client_id, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.settings.requests_per_minute:
                return max(1, math.ceil(window[0] + 60 - now))
            window.append(now)
            return None

    def set_faults(
        self,
        error_rate: float | None = None,
        timeout_rate: float | None = None,
        latency_ms: int | None = None,
        force_429: int | None = None,
        retry_after_s: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Change fault injection; omitted values keep their current setting."""
        with self._lock:
            current = getattr(self, "_faults", Faults())
            faults = Faults(
                error_rate=current.error_rate if error_rate is None else float(error_rate),
                timeout_rate=current.timeout_rate if timeout_rate is None else float(timeout_rate),
                latency_ms=current.latency_ms if latency_ms is None else int(latency_ms),
                force_429=current.force_429 if force_429 is None else int(force_429),
                retry_after_s=(
                    current.retry_after_s if retry_after_s is None else int(retry_after_s)
                ),
                seed=seed if seed is not None else current.seed,
            )
            if not (0 <= faults.error_rate <= 1 and 0 <= faults.timeout_rate <= 1):
                raise ValueError("error_rate and timeout_rate must be between 0 and 1")
            self._faults = faults
            if seed is not None or not hasattr(self, "_fault_rng"):
                self._fault_rng = random.Random(faults.seed)
            return dataclasses.asdict(faults)

    def draw_fault(self) -> tuple[str | None, float]:
        """(None | "error" | "timeout", latency seconds) for the next API request."""
        with self._lock:
            faults = self._faults
            latency = faults.latency_ms / 1000
            if not faults.error_rate and not faults.timeout_rate:
                return None, latency
            draw = self._fault_rng.random()
            if draw < faults.error_rate:
                return "error", latency
            if draw < faults.error_rate + faults.timeout_rate:
                return "timeout", latency
            return None, latency

    def record(self, route: str, status: int) -> None:
        with self._lock:
            self._requests[route] += 1
            self._statuses[status] += 1

    def count(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._requests),
                "responses": {str(status): n for status, n in sorted(self._statuses.items())},
                "unauthorized": self._statuses[401],
                "precondition_failed": self._statuses[412],
                "precondition_required": self._statuses[428],
                "rate_limited": self._statuses[429],
                "writes": self._counters["writes"],
                "user_edits": self._counters["user_edits"],
                "tokens_issued": self._counters["tokens_issued"],
                "customers": len(self._customers),
                "orders": len(self._orders),
                "faults": dataclasses.asdict(self._faults),
            }

    # -- internals ----------------------------------------------------------------------
    @property
    def customer_type(self) -> EntityType:
        """CustomerInfo as this installation names its key (`settings.customer_key`)."""
        return customer_info(self.settings.customer_key)

    def _keyed(self, seeded: dict[str, Any]) -> dict[str, Any]:
        """A seeded customer (keyed `CustomerId`) under this installation's key property."""
        key = self.settings.customer_key
        return {(key if name == "CustomerId" else name): value for name, value in seeded.items()}

    def _seeded(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored customer as the seeding code reads it (keyed `CustomerId`)."""
        return {**stored, "CustomerId": stored[self.settings.customer_key]}

    def _table(self, entity: EntityType) -> dict[str, StoredEntity]:
        return self._orders if entity.name == "CustomerOrder" else self._customers

    def _store(
        self,
        entity: EntityType,
        fields: dict[str, Any],
        objid: str,
        objversion: str,
        key: str | None = None,
    ) -> StoredEntity:
        key = key if key is not None else str(fields[entity.key])
        data: dict[str, Any] = {"luname": entity.luname, "keyref": entity.keyref(key)}
        if entity.stateful and "Objstate" in fields:
            data["Objstate"] = fields["Objstate"]
        data["Objgrants"] = None
        data.update((k, v) for k, v in fields.items() if k not in data)
        stored = StoredEntity(data, objid, objversion)
        self._table(entity)[key] = stored
        return stored

    def _render(self, stored: StoredEntity) -> dict[str, Any]:
        return {"@odata.etag": stored.etag, **stored.data}

    def _locate(self, entity: EntityType, key: str, if_match: str) -> StoredEntity:
        stored = self._table(entity).get(key)
        if stored is None:
            raise not_found()
        if if_match.strip() != "*" and if_match.strip() != stored.etag:
            prompt = _LU_PROMPTS[entity.name]
            text = (
                f'The {prompt} "{key}" has been modified by another user. '
                "Please refresh the object and reenter your changes."
            )
            status, code = self.settings.stale_etag_status, self.settings.stale_etag_code
            if code == "DATABASE_ERROR" and self.settings.stale_etag_ora == 20113:
                text = f'The {prompt} "{key}" is locked by another user. Please try again later.'
                refused = database_error(20113, entity.luname, "LOCKED", text)
                raise IfsError(status, code, text, details=refused.details)
            if code == "DATABASE_ERROR":
                refused = database_error(20114, entity.luname, "MODIFIED", text)
                raise IfsError(status, code, text, details=refused.details)
            raise IfsError(status, code, text)
        return stored

    def _objversion_after(self, previous: str | None) -> str:
        """Now as YYYYMMDDHHMMSS, but always later than `previous` (several writes a second)."""
        candidate = datetime.fromtimestamp(self.now(), tz=UTC).replace(microsecond=0)
        if previous is not None:
            floor = datetime.strptime(previous, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            candidate = max(candidate, floor + timedelta(seconds=1))
        return seeding.stamp(candidate)

    def _bump(self, stored: StoredEntity) -> None:
        stored.objversion = self._objversion_after(stored.objversion)

    def _user_edit(self, entity: EntityType, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._check_fields(entity, fields, allow_envelope=entity.stateful)
        if entity.key in fields:
            raise ValueError(f"{entity.key} cannot be edited")
        with self._lock:
            stored = self._table(entity)[key]
            if fields.get("Objstate") == "Blocked" and stored.data.get("Objstate") != "Blocked":
                stored.previous_state = stored.data.get("Objstate")
            stored.data.update(fields)
            self._bump(stored)
            self._counters["user_edits"] += 1
            return self._render(stored)

    @staticmethod
    def _check_fields(entity: EntityType, fields: dict[str, Any], allow_envelope: bool) -> None:
        for name, value in fields.items():
            if name not in entity.properties or name in ("luname", "keyref", "Objgrants"):
                raise ValueError(f"{name} is not a property of {entity.name}")
            if name == "Objstate" and not allow_envelope:
                raise ValueError("Objstate cannot be set here")
            problem = value_problem(entity.properties[name], value)
            if problem and name != "Objstate":
                raise ValueError(f"{name}: {problem}")
            if name == "Objstate" and value not in entity.enum_members(entity.properties[name]):
                raise ValueError(f"Objstate: unknown state {value!r}")

    def _free_customer_id(self) -> str:
        while seeding.customer_id(self._next_customer) in self._customers:
            self._next_customer += 1
        key = seeding.customer_id(self._next_customer)
        self._next_customer += 1
        return key

    def _any_customer(self, customer_no: Any) -> dict[str, Any]:
        if customer_no is None and self._customers:
            return self._seeded(next(iter(self._customers.values())).data)
        return {"CustomerId": customer_no, "Name": None, "Country": "FR"}


def check_action_parameters(
    entity: EntityType, action: BoundAction, parameters: dict[str, Any]
) -> None:
    """Refuse, as Olingo's deserializer does, unknown, mistyped and missing required parameters."""
    operation = f"{entity.name}_{action.name}"
    for name, value in parameters.items():
        parameter = action.parameter(name)
        if parameter is None:
            raise deserialization_error(
                f"The parameter '{name}' is not a parameter of the action '{operation}'."
            )
        problem = value_problem(parameter.edm_type, value, parameter.max_length)
        if problem:
            raise deserialization_error(f"Invalid value for parameter '{name}': {problem}.")
    for parameter in action.parameters:
        if not parameter.nullable and parameters.get(parameter.name) is None:
            raise deserialization_error(
                f"The parameter '{parameter.name}' of the action '{operation}' is required "
                "and may not be null."
            )


def value_problem(edm_type: str, value: Any, max_length: int | None = None) -> str | None:
    """Why `value` cannot be stored in a property of `edm_type`, or None when it can."""
    if value is None:
        return None
    if edm_type == STRING:
        if not isinstance(value, str):
            return "expected a string"
        if max_length is not None and len(value) > max_length:
            return f"longer than {max_length} characters"
        return None
    if edm_type == BOOLEAN:
        return None if isinstance(value, bool) else "expected true or false"
    if edm_type == DECIMAL:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "expected a number"
    if edm_type in (DATE, DATETIME):
        if not isinstance(value, str):
            return "expected a date string"
        if not re.fullmatch(_DATE_PATTERNS[edm_type], value):
            return "wrong date format"
        try:
            coerce(value, edm_type)
        except ValueError:
            return "not a valid date"
        return None
    return "not writable"
