"""Throw-away databases for storage tests: a fresh Postgres database or SQLite file per use.

The session's `postgres_url` database is shared with other tests (which may create tables
without Alembic), so migration and vault tests make their own database next to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from tests.fixtures.services import POSTGRES_ADMIN_URL


@contextmanager
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """URL of a new empty database on the same server as `postgres_url`; dropped afterwards."""
    name = f"{postgres_url.rsplit('/', 1)[1]}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
