"""database.run: statements built once, their compiled SQL sent to the cursor on psycopg2,
with the results, parameter processing, cursor events and errors of SQLAlchemy's execute."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, event, func, insert, select
from sqlalchemy.exc import IntegrityError

from connector.storage.database import Database, run
from connector.storage.models import IdMapEntry, aware, table_of
from connector.storage.upsert import upsert

TABLE = table_of(IdMapEntry)
KEY = ("tenant", "entity", "ifs_key")
READ = select(TABLE.c.last_payload, TABLE.c.updated_at, TABLE.c.pipedrive_id).where(
    TABLE.c.tenant == bindparam("tenant")
)


def _statements(database: Database) -> list[str]:
    seen: list[str] = []
    event.listen(
        database.engine,
        "before_cursor_execute",
        lambda _c, _cur, sql, *_rest: seen.append(sql.split(None, 1)[0]),
    )
    return seen


def test_values_go_in_and_come_back_as_through_sqlalchemy_and_the_events_see_each(database, tenant):
    seen = _statements(database)
    moment = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    payload = {"name": "Acme", "nested": {"ids": [1, 2]}, "none": None}
    with database.session() as session:
        upsert(
            session,
            IdMapEntry,
            {
                **dict(zip(KEY, (tenant, "order", "O-1"), strict=True)),
                "pipedrive_id": 7,
                "last_payload": payload,
                "updated_at": moment,
            },
            key=KEY,
        )
    rows = database.fetch(READ, {"tenant": tenant})
    with database.session() as session:
        expected = [tuple(row) for row in session.execute(READ, {"tenant": tenant})]

    assert rows == expected
    [(stored, at, pipedrive_id)] = rows
    assert (stored, aware(at), pipedrive_id) == (payload, moment, 7)  # SQLite drops the zone
    assert seen[:2] == ["INSERT", "SELECT"]  # counted as SQLAlchemy's own execute counts


def test_a_column_default_left_out_is_still_filled_in(database, tenant):
    """updated_at has a Python-side default: such a statement runs through SQLAlchemy."""
    with database.session() as session:
        upsert(
            session, IdMapEntry, {"tenant": tenant, "entity": "order", "ifs_key": "O-2"}, key=KEY
        )
    [(payload, updated_at, pipedrive_id)] = database.fetch(READ, {"tenant": tenant})
    assert (payload, pipedrive_id) == (None, None)
    assert updated_at is not None


def test_an_in_list_is_expanded_per_execution(database, tenant):
    with database.session() as session:
        for key in ("A", "B", "C"):
            upsert(
                session,
                IdMapEntry,
                {"tenant": tenant, "entity": "order", "ifs_key": key, "etag": key},
                key=KEY,
            )
    statement = select(func.count()).where(
        TABLE.c.tenant == bindparam("tenant"),
        TABLE.c.ifs_key.in_(bindparam("keys", expanding=True)),
    )
    assert database.fetch(statement, {"tenant": tenant, "keys": ["A", "C"]}) == [(2,)]
    assert database.fetch(statement, {"tenant": tenant, "keys": ["B"]}) == [(1,)]


def test_a_database_error_is_sqlalchemys_and_leaves_the_transaction_rolled_back(database, tenant):
    values = {"tenant": tenant, "entity": "order", "ifs_key": "X", "updated_at": datetime.now(UTC)}
    plain = insert(TABLE)  # no ON CONFLICT: the second row breaks the unique key
    with pytest.raises(IntegrityError), database.session() as session:
        run(session, plain, values, column_keys=tuple(values))
        run(session, plain, values, column_keys=tuple(values))
    assert database.fetch(READ, {"tenant": tenant}) == []
