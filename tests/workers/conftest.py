"""What every test of the workers package shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.runtime import Runtime
from tests.connector.webhooks.support import make_runtime
from workers.runtime import close_runtime, set_runtime


@pytest.fixture(autouse=True)
def no_process_runtime_left() -> Iterator[None]:
    """A task run in this process without a runtime of the test's builds the process-wide
    live one (this process's settings, a configuration-check thread): it is closed after the
    test, so that no thread outlives it and checks a tenants file nobody wrote."""
    yield
    close_runtime()


@pytest.fixture
def runtime(postgres_url: str) -> Iterator[Runtime]:
    """A runtime on the real database, without tenants, used by the tasks of this process."""
    runtime = make_runtime(postgres_url, {})
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    runtime.close()
