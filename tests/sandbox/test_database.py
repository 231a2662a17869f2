"""empty_database: a new empty Postgres database, dropped afterwards even while connected."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sandbox.database import empty_database
from tests.fixtures.services import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration


def _databases() -> set[str]:
    admin = sa.create_engine(POSTGRES_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return set(conn.scalars(sa.text("SELECT datname FROM pg_database")))
    finally:
        admin.dispose()


def test_creates_an_empty_database_and_drops_it_with_open_connections(postgres_url) -> None:
    with empty_database(POSTGRES_ADMIN_URL, prefix="mlc_test_sandbox") as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("mlc_test_sandbox_") and name in _databases()
        engine = sa.create_engine(url)
        held = engine.connect()  # a worker that never let go
        tables = held.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        assert tables == []
    assert name not in _databases()
    held.invalidate()  # its server side was terminated by the drop
    engine.dispose()
