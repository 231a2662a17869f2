"""Engine and session handling for the connector database (Postgres or SQLite)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ClauseElement, Executable

from connector.errors import ConfigError

SETTING = "CONNECTOR_DATABASE_URL"
# Pooled connections are replaced after this long, before a server or proxy idle timeout
# closes them under us; a connection found dead anyway is replaced on the error (see
# Database.transaction), instead of a `SELECT 1` before every checkout.
POOL_RECYCLE_S = 600
T = TypeVar("T")
# Drivers of the Postgres dialect and the module each needs, for the message when it is absent.
_DRIVER_MODULES = {"psycopg": "psycopg (v3)", "psycopg2": "psycopg2", "asyncpg": "asyncpg"}


def database_url(url: str) -> URL:
    """The SQLAlchemy URL of a CONNECTOR_DATABASE_URL value; ConfigError says what is wrong.

    `postgres://` (the scheme Heroku, Render, Fly and many PaaS hand out) is taken as
    `postgresql+psycopg2://`: its meaning is not in doubt, and psycopg2 is the driver this
    package installs, so refusing it would only make operators rewrite a URL by hand.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"{SETTING} is not a database URL (expected e.g. "
            "postgresql+psycopg2://user:password@host:5432/name or sqlite:///var/connector.db)"
        ) from None
    if parsed.drivername in ("postgres", "postgres+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


class Database:
    """One engine and session factory per process and URL."""

    def __init__(self, url: str) -> None:
        parsed = database_url(url)
        self.url = parsed.render_as_string(hide_password=False)
        try:
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = create_engine(
                    parsed, connect_args={"check_same_thread": False, "timeout": 30}
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(
                    parsed, pool_recycle=POOL_RECYCLE_S, pool_size=5, max_overflow=10
                )
        except ArgumentError as error:  # NoSuchModuleError: no such dialect or driver
            raise ConfigError(
                f"{SETTING} {parsed.render_as_string(hide_password=True)}: SQLAlchemy has no "
                f"database driver {parsed.drivername!r} (use postgresql+psycopg2:// or sqlite:///)"
            ) from error
        except ImportError as error:
            driver = parsed.get_driver_name()
            module = _DRIVER_MODULES.get(driver, error.name or driver)
            raise ConfigError(
                f"{SETTING} {parsed.render_as_string(hide_password=True)} needs the {module} "
                f"module, which is not installed (No module named {error.name!r}); use "
                "postgresql+psycopg2:// (installed with ml-connector) or install that driver"
            ) from error
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one transaction and commit it; the result of `work`.

        A connection that turns out dead before the commit (a Postgres restart, a proxy that
        dropped it) has rolled back everything `work` did: SQLAlchemy replaces the pool's
        connections, and `work` runs once more on a fresh one. A failure at the commit itself
        is not retried: whether it committed is unknown.
        """
        for attempt in (1, 2):
            with self._sessions() as session:
                try:
                    session.begin()
                    result = work(session)
                    session.flush()
                except DBAPIError as error:
                    session.rollback()
                    if attempt == 1 and error.connection_invalidated:
                        continue
                    raise
                session.commit()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, work: Callable[[Session], T]) -> T:
        """Run the read-only `work` outside a transaction (autocommit: no BEGIN, no COMMIT);
        once more on a fresh connection if the pooled one was dead."""
        for attempt in (1, 2):
            try:
                with (
                    self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
                    Session(bind=conn, expire_on_commit=False) as session,
                ):
                    return work(session)
            except DBAPIError as error:
                if attempt == 1 and error.connection_invalidated:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def statement(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, one statement that is a whole transaction, and return its result:
        committed once it returns, on Postgres in one round trip where a transaction costs
        three (BEGIN, the statement, COMMIT), e.g. an INSERT … ON CONFLICT … RETURNING.

        Not retried on a dead connection: the statement may have committed before the
        connection broke, as at the commit of `transaction`."""
        if self.engine.dialect.driver != "psycopg2":
            with self.engine.begin() as connection:
                return work(connection)
        with self.engine.connect() as connection:
            # The DBAPI's own autocommit switch, set and reset client-side. SQLAlchemy's
            # isolation_level="AUTOCOMMIT" would cost a `SET default_transaction_isolation`
            # round trip on every return to the pool.
            dbapi_connection: Any = connection.connection.dbapi_connection
            dbapi_connection.autocommit = True
            try:
                result = work(connection)
                connection.commit()  # no round trip: ends SQLAlchemy's implicit transaction
            finally:
                if not dbapi_connection.closed:
                    dbapi_connection.autocommit = False
            return result

    def fetch(self, statement: Executable, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only `statement` (built once, see `run`) outside a
        transaction, as `read` runs it; once more on a fresh connection if the pooled one
        was dead. No ORM session: a record's reads cost less CPU than their round trips."""
        for attempt in (1, 2):
            try:
                return self.statement(lambda connection: run(connection, statement, values))
            except DBAPIError as error:
                if attempt == 1 and error.connection_invalidated:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def dispose(self) -> None:
        self.engine.dispose()


def run(
    bind: Connection | Session,
    statement: Executable,
    values: Mapping[str, Any],
    *,
    column_keys: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """Execute `statement` (built once, with bound parameters) with `values` on `bind`'s
    connection (a Session's: in its transaction); the rows it returns, if any.

    On psycopg2 the SQL SQLAlchemy compiled for the statement once goes straight to the
    connection's cursor, with the parameters processed by the columns' own bind processors
    (JSON serialised as SQLAlchemy would): SQLAlchemy's per-execution path (ORM session
    dispatch, cache key, execution context, result wrapping) was about half of a synced
    record's worker CPU. Errors and cursor events as in `cursor_execute`. A statement whose
    compiled form needs Python-side column defaults, or another driver, runs through
    SQLAlchemy's own execute. `column_keys`: the columns of an INSERT built without values.
    """
    connection = bind.connection() if isinstance(bind, Session) else bind
    compiled = (
        _compiled(statement, connection.dialect, tuple(column_keys or ()))
        if connection.dialect.driver == "psycopg2"
        else None
    )
    if compiled is None:
        result = connection.execute(statement, dict(values))
        return [tuple(row) for row in result] if result.returns_rows else []
    sql, construct, processors = compiled
    parameters = construct(dict(values))
    for name, process in processors:
        if name in parameters:
            parameters[name] = process(parameters[name])
    return cursor_execute(connection, sql, parameters)


@functools.lru_cache(maxsize=128)
def _compiled(
    statement: Executable, dialect: Dialect, column_keys: tuple[str, ...]
) -> tuple[str, Callable[[dict[str, Any]], dict[str, Any]], tuple[tuple[str, Any], ...]] | None:
    compiled: Any = cast(ClauseElement, statement).compile(
        dialect=dialect, column_keys=list(column_keys) or None
    )
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.positional
        or compiled.post_compile_params
    ):
        # Python-side defaults or IN lists to expand per execution: SQLAlchemy's job.
        return None
    if any(
        column.type.dialect_impl(dialect).result_processor(dialect, None) is not None
        for column in compiled._result_columns
    ):
        return None  # values the driver's own would not be (SQLAlchemy converts them)
    processors = tuple(
        (compiled.bind_names[bind], process)
        for bind in compiled.bind_names
        if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    )
    return compiled.string, compiled.construct_params, processors


def cursor_execute(
    connection: Connection, sql: str, parameters: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Send compiled `sql` with DBAPI `parameters` to `connection`'s DBAPI cursor; its rows.

    The engine's cursor events still see the statement (statement counts, tracing), as from
    SQLAlchemy's execute, without an execution context (None); a DBAPI error is raised as
    SQLAlchemy's execute raises it (a dead connection leaves the pool: `connection_invalidated`)."""
    raw: Any = connection.connection.dbapi_connection
    assert raw is not None, "a checked-out connection has its DBAPI connection"
    cursor = raw.cursor()
    dbapi_error = connection.dialect.loaded_dbapi.Error
    events = connection.dispatch
    try:
        for before in events.before_cursor_execute:
            sql, parameters = before(connection, cursor, sql, parameters, None, False)
        cursor.execute(sql, parameters)
        for after in events.after_cursor_execute:
            after(connection, cursor, sql, parameters, None, False)
        return list(cursor.fetchall()) if cursor.description is not None else []
    except dbapi_error as error:
        invalidated = connection.dialect.is_disconnect(error, raw, cursor)
        if invalidated:
            connection.invalidate(error)
        raise DBAPIError.instance(
            sql, parameters, error, dbapi_error, connection_invalidated=invalidated
        ) from error
    finally:
        cursor.close()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets the demo's worker threads read while one writes.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
