"""Poll until something is done: the one waiting loop of the CLI, the demo, tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 120.0, interval: float = 0.2) -> T:
    """Call `condition` until it returns something truthy or `timeout` seconds have passed.

    Returns its last value, so the caller both tests the outcome and can say what it was.
    The condition is asked once more after the deadline: a slow last poll still counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
