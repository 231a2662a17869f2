"""The id map: partial saves, racing first saves, lookups by Pipedrive id, plan summaries."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from connector.storage.idmap import CUSTOMER, ORDER, IdMap, PushedState, content_hash
from connector.storage.models import IdMapEntry
from tests.connector.storage.conftest import at_once

T1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
T2 = datetime(2026, 3, 1, 10, 5, tzinfo=UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite gives the UTC value back without its zone.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def test_save_changes_only_the_fields_it_is_given(database, tenant):
    idmap = IdMap(database)
    payload = {"title": "Order 1", "value": 10}

    idmap.save(tenant, ORDER, "O-1", pipedrive_id=5, etag='W/"a"')
    idmap.save(tenant, ORDER, "O-1", payload=payload)
    idmap.save(tenant, ORDER, "O-1", etag='W/"b"')
    idmap.save(tenant, ORDER, "O-1")

    entry = idmap.get(tenant, ORDER, "O-1")
    assert entry is not None
    assert (entry.pipedrive_id, entry.etag) == (5, 'W/"b"')
    assert entry.last_payload == payload and entry.content_hash == content_hash(payload)


def test_content_hash_ignores_key_order_and_sees_any_change():
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_concurrent_first_saves_of_one_key_leave_one_row(database, tenant):
    idmap = IdMap(database)

    at_once(8, lambda index: idmap.save(tenant, CUSTOMER, "C-1", pipedrive_id=100 + index))

    with database.session() as session:
        count = session.scalar(
            select(func.count()).select_from(IdMapEntry).where(IdMapEntry.tenant == tenant)
        )
    entry = idmap.get(tenant, CUSTOMER, "C-1")
    assert count == 1 and entry is not None and entry.pipedrive_id in range(100, 108)


def test_by_pipedrive_id_finds_the_oldest_entry_of_that_entity(database, tenant):
    idmap = IdMap(database)
    idmap.save(tenant, CUSTOMER, "C-9", pipedrive_id=42)  # same number, other entity
    idmap.save(tenant, ORDER, "O-2", pipedrive_id=42)
    idmap.save(tenant, ORDER, "O-1", pipedrive_id=42)  # relinked later: newer row
    # Unlinked and linked again: O-2's row version now sits behind O-1's on disk and in the
    # index, so only an explicit order finds the older entry first.
    idmap.save(tenant, ORDER, "O-2", pipedrive_id=41)
    idmap.save(tenant, ORDER, "O-2", pipedrive_id=42)

    found = idmap.by_pipedrive_id(tenant, ORDER, 42)

    assert found is not None and found.ifs_key == "O-2"
    assert idmap.by_pipedrive_id(tenant, ORDER, 43) is None
    assert idmap.by_pipedrive_id(tenant + "-other", ORDER, 42) is None


def test_summaries_hold_what_a_plan_compares_for_one_tenant_and_entity(database, tenant):
    idmap = IdMap(database)
    idmap.save(tenant, ORDER, "O-1", pipedrive_id=1, etag="e1", payload={"v": 1})
    idmap.save(tenant, ORDER, "O-2", etag="e2")
    idmap.save(tenant, CUSTOMER, "C-1", pipedrive_id=3)
    idmap.save(tenant + "-other", ORDER, "O-3", pipedrive_id=4)

    assert idmap.summaries(tenant, ORDER) == {
        "O-1": PushedState(1, "e1", content_hash({"v": 1})),
        "O-2": PushedState(None, "e2", None),
    }
    assert idmap.linked_pipedrive_ids(tenant, ORDER) == {1}


def test_the_last_event_time_only_moves_forward(database, tenant):
    idmap = IdMap(database)
    idmap.save(tenant, ORDER, "O-1", pipedrive_id=8)

    idmap.advance_last_event(tenant, ORDER, 8, T2)
    idmap.advance_last_event(tenant, ORDER, 8, T1)

    entry = idmap.get(tenant, ORDER, "O-1")
    assert entry is not None and _aware(entry.last_event_at) == T2


def test_load_replaces_the_whole_map_of_one_tenant_only(database, tenant):
    idmap = IdMap(database)
    other = f"{tenant}-other"
    idmap.save(tenant, "order", "stale", pipedrive_id=1)
    idmap.save(other, "order", "kept", pipedrive_id=2)

    loaded = idmap.load(
        tenant,
        [("customer", "C1", 10, "e1", None), ("order", "O1", 11, "e2", {"title": "x"})],
    )

    assert loaded == 2
    assert idmap.get(tenant, "order", "stale") is None
    order = idmap.get(tenant, "order", "O1")
    assert order is not None and order.pipedrive_id == 11 and order.content_hash
    customer = idmap.get(tenant, "customer", "C1")
    assert customer is not None and customer.content_hash is None
    assert idmap.get(other, "order", "kept") is not None
