"""Engine and session handling for the connector database (Postgres or SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

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

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets the demo's worker threads read while one writes.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
