"""wait_until: the one poll-until-done loop."""

from __future__ import annotations

import time

from connector.polling import wait_until


def test_returns_the_first_truthy_value_without_waiting_longer() -> None:
    answers = iter([0, [], "done", "later"])
    started = time.monotonic()
    assert wait_until(lambda: next(answers), timeout=5, interval=0.01) == "done"
    assert next(answers) == "later"  # not asked again once done
    assert time.monotonic() - started < 5


def test_returns_the_last_falsy_value_after_the_timeout() -> None:
    calls: list[float] = []

    def never() -> int:
        calls.append(time.monotonic())
        return 0

    started = time.monotonic()
    assert wait_until(never, timeout=0.2, interval=0.05) == 0
    assert calls[-1] - started > 0.2  # asked once more after the deadline
    assert len(calls) >= 3
