"""Throw-away databases for storage tests: a fresh, empty Postgres database per use.

The session's `postgres_url` database is already migrated, so migration and vault tests
that need an empty schema make their own database next to it.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager

from sandbox.database import empty_database
from tests.fixtures.services import POSTGRES_ADMIN_URL


def fresh_postgres(postgres_url: str) -> AbstractContextManager[str]:
    """URL of a new empty database on the server of `postgres_url` (whose fixture checked
    that the server answers); dropped afterwards."""
    return empty_database(
        POSTGRES_ADMIN_URL, f"{postgres_url.rsplit('/', 1)[1]}_{uuid.uuid4().hex[:8]}"
    )
