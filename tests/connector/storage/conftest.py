"""A migrated connector database per backend (Postgres, SQLite) for the storage tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from connector.storage.database import Database
from connector.storage.migrate import upgrade


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's migrated Postgres database, or a SQLite file migrated the same way."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('storage') / 'connector.db'}"
        upgrade(url)
        return url
    postgres: str = request.getfixturevalue("postgres_url")
    return postgres


@pytest.fixture
def database(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.dispose()


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses: the Postgres database is shared by the session."""
    return f"st-{uuid.uuid4().hex[:10]}"


def at_once(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(0) … work(count - 1)` in threads released together; their results."""
    import threading

    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))
