"""What every test of the workers package shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workers.runtime import close_runtime


@pytest.fixture(autouse=True)
def no_process_runtime_left() -> Iterator[None]:
    """A task run in this process without a runtime of the test's builds the process-wide
    live one (this process's settings, a configuration-check thread): it is closed after the
    test, so that no thread outlives it and checks a tenants file nobody wrote."""
    yield
    close_runtime()
