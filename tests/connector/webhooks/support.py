"""Helpers shared by the webhook receiver and stage push tests: tenants, runtimes, payloads."""

from __future__ import annotations

import json
import uuid
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.database import Database
from connector.storage.models import Base, WebhookEvent
from connector.tenants import parse_tenants

KEY = Fernet.generate_key().decode()
INTEGRATION_USER = 900
APP_USER = 17
_prepared: set[str] = set()


def prepare_database(url: str) -> None:
    """Create the tables once per database (the session database is shared, see storage tests)."""
    if url in _prepared:
        return
    database = Database(url)
    Base.metadata.create_all(database.engine)
    database.dispose()
    _prepared.add(url)


def unique_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tenant_body(
    *,
    ifs_url: str = "https://ifs.example.com",
    namespace: str = "ns",
    client_id: str = "ml-connector",
    auth: str = "basic",
    **webhook: Any,
) -> dict[str, Any]:
    return {
        "ifs": {"base_url": ifs_url, "namespace": namespace, "client_id": client_id},
        "pipedrive": {
            "api_domain": "https://acme.pipedrive.com",
            "integration_user_id": INTEGRATION_USER,
        },
        "webhook": {"auth": auth, **webhook},
    }


def make_runtime(database_url: str, tenants: dict[str, dict[str, Any]]) -> Runtime:
    settings = Settings(database_url=database_url, encryption_keys=KEY, redis_url=None)
    return Runtime(settings, tenants=parse_tenants({"tenants": tenants}))


def v2_deal_event(
    deal_id: int,
    *,
    stage_id: int | None = 2,
    previous_stage_id: int | None = 1,
    status: str = "open",
    previous_status: str | None = None,
    timestamp: str = "2026-03-01T10:00:00Z",
    change_source: str = "app",
    user_id: int = APP_USER,
    event_id: str | None = None,
    entity: str = "deal",
    action: str = "change",
) -> dict[str, Any]:
    """A Pipedrive webhooks v2 payload (ids in meta are strings, as Pipedrive sends them)."""
    previous: dict[str, Any] = {}
    if previous_stage_id is not None:
        previous["stage_id"] = previous_stage_id
    if previous_status is not None:
        previous["status"] = previous_status
    return {
        "data": {"id": deal_id, "stage_id": stage_id, "status": status, "title": "Deal"},
        "previous": previous or None,
        "meta": {
            "action": action,
            "entity": entity,
            "entity_id": str(deal_id),
            "id": event_id or str(uuid.uuid4()),
            "timestamp": timestamp,
            "change_source": change_source,
            "user_id": str(user_id),
            "version": "2.0",
            "attempt": 1,
        },
    }


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def events_of(runtime: Runtime, tenant_id: str) -> list[WebhookEvent]:
    with runtime.database.session() as session:
        return list(
            session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.tenant == tenant_id)
                .order_by(WebhookEvent.id)
            )
        )


# Values Pipedrive never sends at these places; each one alone makes a delivery invalid.
WRONG_VALUES: dict[tuple[str, ...], list[Any]] = {
    ("meta",): [[], "meta", 1, None, True],
    ("meta", "action"): [{}, [], 1, "", "explode", None],
    ("meta", "entity"): [{}, [], 1, "", "Deal!", None, "x" * 40],
    ("meta", "entity_id"): [{}, [], "abc", True, 1.5, -1, "12a", 2**64, "1" * 25],
    ("meta", "id"): [{}, [], 5, "", "x" * 65],
    ("meta", "user_id"): [{}, [], "abc", True, -3],
    ("meta", "merged_to_id"): [{}, "x"],
    ("meta", "timestamp"): [{}, [], "not a time", True],
    ("meta", "change_source"): [{}, [], 1, "x" * 17],
    ("meta", "attempt"): ["1", {}, 1.5],
    ("data",): ["x", [], 1, None],
    ("previous",): ["x", [], 1],
    ("data", "id"): [{}, "x", 99, -1],
    ("data", "stage_id"): ["3", "abc", {}, [], True, 1.5, -1],
    ("data", "status"): [1, "gone", {}, []],
    ("data", "pipeline_id"): ["1", {}],
    ("previous", "stage_id"): ["2", {}, True],
    ("previous", "status"): [0, "maybe"],
}


def malformed_variants(deal_id: int = 41) -> list[tuple[str, bytes]]:
    """(name, body) of authenticated-looking deliveries that must be refused with 400: every
    wrong value above on a valid v2 deal change, plus bodies that are not storable JSON."""
    variants: list[tuple[str, bytes]] = []
    for path, values in WRONG_VALUES.items():
        for number, value in enumerate(values):
            payload = v2_deal_event(deal_id)
            payload["previous"] = payload["previous"] or {}
            target = payload
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            variants.append((f"{'.'.join(path)}#{number}", encode(payload)))
    # Fields the connector needs, left out (one delivery each).
    for name, paths in (
        ("no-action", [("meta", "action")]),
        ("no-entity", [("meta", "entity")]),
        ("no-data-in-a-change", [("data",)]),
        ("no-record-id", [("meta", "entity_id"), ("data", "id")]),
    ):
        payload = v2_deal_event(deal_id)
        for path in paths:
            target = payload
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        variants.append((name, encode(payload)))
    nested: Any = {"deep": 1}
    for _ in range(40):
        nested = {"deeper": nested}
    deep = v2_deal_event(deal_id)
    deep["data"]["custom_fields"] = nested
    variants.append(("nested-40", encode(deep)))
    variants.append(("nested-100000", b'{"meta":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    for name, raw in (
        ("nan", b"NaN"),
        ("infinity", b"-Infinity"),
        ("huge-float", b"1e999"),
        ("nul", b'"a\\u0000b"'),
        ("lone-surrogate", b'"\\ud800"'),
    ):
        body = encode(v2_deal_event(deal_id)).replace(b'"title":"Deal"', b'"title":' + raw)
        variants.append((name, body))
    variants.append(
        ("nul-in-key", encode(v2_deal_event(deal_id)).replace(b'"title"', b'"t\\u0000"'))
    )
    # What json.loads lets through without an escape: the UTF-8 form of a surrogate (its
    # "surrogatepass"), and a UTF-16 body (no NUL byte in UTF-8 text, one in every ASCII
    # character of UTF-16); and a number past 64 bits in a field the connector does not read.
    body = encode(v2_deal_event(deal_id))
    variants.append(("utf8-surrogate", body.replace(b'"title":"Deal"', b'"title":"\xed\xa0\x80"')))
    variants.append(
        (
            "utf16-surrogate",
            body.decode().replace('"Deal"', '"\ud800"').encode("utf-16-le", "surrogatepass"),
        )
    )
    variants.append(
        ("huge-int-unread", body.replace(b'"title":"Deal"', b'"title":123456789012345678901'))
    )
    variants.append(("body-array", b"[1,2,3]"))
    variants.append(("body-string", b'"deal"'))
    variants.append(("body-null", b"null"))
    variants.append(("not-json", b"{'meta': 1}"))
    variants.append(("not-utf8", b"\xff\xfe{}"))
    return variants
