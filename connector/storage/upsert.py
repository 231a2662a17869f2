"""The one way rows are inserted-or-updated: INSERT … ON CONFLICT on Postgres and SQLite."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from connector.storage.database import run
from connector.storage.models import Base


def _insert(session: Session | Connection, model: type[Base] | Any) -> Any:
    return _dialect_insert(_bind(session).dialect.name, model)


def _dialect_insert(dialect: str, model: type[Base] | Any) -> Any:
    if dialect == "postgresql":
        return postgresql_insert(model)
    if dialect == "sqlite":
        return sqlite_insert(model)
    raise ValueError(
        f"no upsert for the {dialect} dialect: the connector runs on Postgres or SQLite"
    )


def dialect_insert(session: Session, model: type[Base]) -> Any:
    """The backend's INSERT of `model`, for an ON CONFLICT clause of the caller's own."""
    return _insert(session, model)


def upsert(
    session: Session,
    model: type[Base],
    values: Mapping[str, Any],
    *,
    key: Sequence[str],
    update: Iterable[str] | None = None,
) -> None:
    """Insert `values` as a row of `model`, or, when a row with the same `key` columns exists,
    set its `update` columns (default: every non-key column of `values`) to `values`.

    One statement, so two writers racing on a new key both succeed and leave one row.
    Column `onupdate` defaults do not run on the conflict path: pass such columns (updated_at)
    in `values` and `update`. An empty `update` leaves an existing row as it is.
    """
    columns = [name for name in (update if update is not None else values) if name not in key]
    statement = _upsert_statement(
        _bind(session).dialect.name, model.__table__, tuple(key), tuple(columns)
    )
    run(session, statement, values, column_keys=tuple(values))


@functools.lru_cache(maxsize=64)
def _upsert_statement(
    dialect: str, table: Table, key: tuple[str, ...], columns: tuple[str, ...]
) -> Any:
    """Built once per table, key and updated columns, the values bound per execution: building
    it per call (and its cache key) was a third of an id-map write's CPU."""
    statement = _dialect_insert(dialect, table)
    if columns:
        return statement.on_conflict_do_update(
            index_elements=list(key),
            set_={name: statement.excluded[name] for name in columns},
        )
    return statement.on_conflict_do_nothing(index_elements=list(key))


def _bind(session: Session | Connection) -> Any:
    return session if isinstance(session, Connection) else session.get_bind()


def insert_if_absent(
    session: Session | Connection,
    model: type[Base],
    values: Mapping[str, Any],
    *,
    key: Sequence[str],
) -> int | None:
    """Insert `values` unless a row with the same `key` columns exists; the new row's id,
    or None when the row was there already (the unique key decides, also under races).
    A Connection (e.g. Database.statement's, autocommit) skips the ORM session's work.

    A Core statement on the table with the values as parameters, built once per table and
    key and run by `database.run` (on psycopg2 its compiled SQL straight to the cursor): the
    webhook receiver's insert, whose client-side CPU this took from 1.6 to 0.07 ms per row.
    """
    statement = _insert_if_absent_statement(
        _bind(session).dialect.name, model.__table__, tuple(key)
    )
    rows = run(session, statement, values, column_keys=tuple(values))
    return int(rows[0][0]) if rows else None


@functools.lru_cache(maxsize=32)
def _insert_if_absent_statement(dialect: str, table: Table, key: tuple[str, ...]) -> Any:
    return (
        _dialect_insert(dialect, table)
        .on_conflict_do_nothing(index_elements=list(key))
        .returning(table.c.id)
    )


def insert_many_if_absent(
    session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
) -> None:
    """Insert `rows` in one statement, leaving out each whose `key` columns exist already."""
    if rows:
        statement = _insert(session, model).on_conflict_do_nothing(index_elements=list(key))
        session.execute(statement, [dict(row) for row in rows])
