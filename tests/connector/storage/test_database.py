"""Database sessions without a pre-ping: a pooled connection the server closed is replaced on
the error, and the work runs again on a fresh one (Postgres, with a real server-side kill)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2.extensions
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from connector.storage.database import Database
from connector.storage.idmap import CUSTOMER, IdMap

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    yield database
    database.dispose()


def _kill_pooled_connection(database: Database, postgres_url: str) -> None:
    """Terminate, from outside, the server process of the one connection in the pool."""
    pid = database.read(lambda session: session.scalar(sa.text("SELECT pg_backend_pid()")))
    killer = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with killer.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    killer.dispose()


def test_postgres_pool_has_no_pre_ping_and_recycles(postgres: Database) -> None:
    assert postgres.engine.pool._pre_ping is False  # type: ignore[attr-defined]
    assert postgres.engine.pool._recycle > 0  # type: ignore[attr-defined]


def test_a_transaction_on_a_killed_connection_runs_again_on_a_fresh_one(
    postgres: Database, postgres_url: str, tenant: str
) -> None:
    idmap = IdMap(postgres)
    _kill_pooled_connection(postgres, postgres_url)
    runs: list[int] = []

    def work(session: Session) -> int:
        runs.append(1)
        idmap.save(tenant, CUSTOMER, "C1", pipedrive_id=7, etag="e1", session=session)
        return 7

    assert postgres.transaction(work) == 7
    assert len(runs) == 2  # the first ran on the dead connection and rolled back
    entry = idmap.get_many(tenant, [(CUSTOMER, "C1")])[(CUSTOMER, "C1")]
    assert (entry.pipedrive_id, entry.etag) == (7, "e1")


def test_a_read_on_a_killed_connection_runs_again_on_a_fresh_one(
    postgres: Database, postgres_url: str
) -> None:
    _kill_pooled_connection(postgres, postgres_url)
    assert postgres.read(lambda session: session.scalar(sa.text("SELECT 41 + 1"))) == 42


def test_the_plain_session_still_fails_on_a_killed_connection(
    postgres: Database, postgres_url: str
) -> None:
    # What the retry above is for: without a pre-ping the first use of a dead connection
    # fails, and the pool hands out a fresh one afterwards.
    _kill_pooled_connection(postgres, postgres_url)
    with pytest.raises(OperationalError), postgres.session() as session:
        session.execute(sa.text("SELECT 1"))
    with postgres.session() as session:
        assert session.scalar(sa.text("SELECT 1")) == 1


def test_a_statement_opens_no_transaction_and_the_pool_gets_a_transactional_connection_back(
    postgres: Database, tenant: str
) -> None:
    seen: list[int] = []

    def work(connection: sa.Connection) -> int:
        value = connection.execute(sa.text("SELECT 41 + 1")).scalar_one()
        seen.append(connection.connection.dbapi_connection.info.transaction_status)  # type: ignore[union-attr]
        return int(value)

    assert postgres.statement(work) == 42
    # Idle after the statement: no BEGIN went before it and no COMMIT follows (one round trip).
    assert seen == [psycopg2.extensions.TRANSACTION_STATUS_IDLE]
    # The same pooled connection serves transactions again: this one rolls back.
    idmap = IdMap(postgres)
    with pytest.raises(RuntimeError), postgres.session() as session:
        idmap.save(tenant, CUSTOMER, "C1", pipedrive_id=7, etag="e1", session=session)
        raise RuntimeError("undo")
    assert idmap.get_many(tenant, [(CUSTOMER, "C1")]) == {}
    assert postgres.engine.pool.checkedin() == 1  # type: ignore[attr-defined]


def test_a_statement_on_a_killed_connection_fails_and_the_next_runs_on_a_fresh_one(
    postgres: Database, postgres_url: str
) -> None:
    # Not run again: the statement is its own commit, which may have happened.
    _kill_pooled_connection(postgres, postgres_url)
    with pytest.raises(OperationalError):
        postgres.statement(lambda connection: connection.execute(sa.text("SELECT 1")).scalar())
    assert (
        postgres.statement(lambda connection: connection.execute(sa.text("SELECT 2")).scalar()) == 2
    )
