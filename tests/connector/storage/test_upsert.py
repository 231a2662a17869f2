"""The one upsert helper: insert or update by a unique key, atomically, on both backends."""

from __future__ import annotations

from sqlalchemy import func, select

from connector.storage.models import IdMapEntry, TenantState
from connector.storage.upsert import insert_if_absent, upsert
from tests.connector.storage.conftest import at_once

KEY = ("tenant", "entity", "ifs_key")


def _rows(database, tenant):
    with database.session() as session:
        return list(session.scalars(select(IdMapEntry).where(IdMapEntry.tenant == tenant)))


def _entry(tenant, **values):
    return {"tenant": tenant, "entity": "order", "ifs_key": "O-1", **values}


def test_a_new_key_is_inserted_and_a_known_one_updates_only_the_named_columns(database, tenant):
    with database.session() as session:
        upsert(session, IdMapEntry, _entry(tenant, pipedrive_id=7, etag="a"), key=KEY)
    with database.session() as session:
        upsert(
            session,
            IdMapEntry,
            _entry(tenant, pipedrive_id=99, etag="b"),
            key=KEY,
            update=["etag"],
        )

    [row] = _rows(database, tenant)
    assert (row.pipedrive_id, row.etag) == (7, "b")


def test_by_default_every_given_non_key_column_is_updated(database, tenant):
    with database.session() as session:
        upsert(
            session,
            TenantState,
            {"tenant": tenant, "key": "k", "value": {"a": 1}},
            key=("tenant", "key"),
        )
    with database.session() as session:
        upsert(
            session,
            TenantState,
            {"tenant": tenant, "key": "k", "value": {"a": 2}},
            key=("tenant", "key"),
        )

    with database.session() as session:
        assert session.get(TenantState, (tenant, "k")).value == {"a": 2}


def test_an_empty_update_leaves_a_known_row_as_it_is(database, tenant):
    with database.session() as session:
        upsert(session, IdMapEntry, _entry(tenant, etag="first"), key=KEY)
        upsert(session, IdMapEntry, _entry(tenant, etag="second"), key=KEY, update=[])

    [row] = _rows(database, tenant)
    assert row.etag == "first"


def test_writers_racing_on_a_new_key_all_succeed_and_leave_one_row(database, tenant):
    def write(index: int) -> None:
        with database.session() as session:
            upsert(session, IdMapEntry, _entry(tenant, pipedrive_id=index), key=KEY)

    at_once(8, write)

    [row] = _rows(database, tenant)
    assert row.pipedrive_id in range(8)


def test_insert_if_absent_answers_the_new_id_once_then_none(database, tenant):
    with database.session() as session:
        first = insert_if_absent(session, IdMapEntry, _entry(tenant, etag="a"), key=KEY)
    with database.session() as session:
        again = insert_if_absent(session, IdMapEntry, _entry(tenant, etag="b"), key=KEY)
        count = session.scalar(
            select(func.count()).select_from(IdMapEntry).where(IdMapEntry.tenant == tenant)
        )

    [row] = _rows(database, tenant)
    assert first == row.id and again is None and count == 1 and row.etag == "a"
