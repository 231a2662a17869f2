"""Throw-away Postgres databases: created empty on a server, dropped with their connections."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def empty_database(admin_url: str, name: str | None = None, prefix: str = "mlc") -> Iterator[str]:
    """URL of a new, empty database on the server of `admin_url`; dropped afterwards.

    `admin_url` names a database the user may CREATE DATABASE from (e.g. `.../postgres`).
    """
    import sqlalchemy as sa

    name = name or f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                # A worker or pool still connected would make DROP DATABASE fail.
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()
