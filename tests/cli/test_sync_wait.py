"""`sync --wait` tells the operator what the run is doing: progress by state on stderr when
it is not a terminal, the plan's error at once, and a remote outage as "retrying"."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.integration


def _sync(stack: Stack, *args: str, timeout: float = 180):
    return stack.cli("sync", stack.tenant, "--wait", *args, timeout=timeout)


def test_a_plan_that_cannot_run_returns_at_once_with_its_error(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=2, seed=3)
    stack.runtime.vault.delete(stack.tenant, "pipedrive", "api_token")
    stack.start_workers(count=1, concurrency=1)

    # The default timeout is an hour; the subprocess timeout (180 s) would end a wait.
    result = _sync(stack, "--json")

    assert result.returncode == 2, result.stderr + stack.worker_logs()
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # stdout stays JSON
    assert summary["queued"] == 0 and len(summary["plan_errors"]) == 2, summary
    assert all("credentials set" in error for error in summary["plan_errors"])

    text = _sync(stack)
    assert text.returncode == 2 and "plan failed: customer: tenant" in text.stdout, text.stdout


def test_a_remote_outage_shows_as_retrying_and_the_timeout_does_not_blame_the_workers(
    stack_factory,
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=2, seed=4)
    stack.ifs.set_faults(error_rate=1.0)  # every IFS API request answers 503
    stack.start_workers(count=1, concurrency=1)

    result = _sync(stack, "--json", "--timeout", "45")

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""  # nothing but the summary would go to stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("sync ")]
    assert progress, result.stderr  # a line every few seconds though stderr is a pipe
    assert "retrying: ifs HTTP 503" in result.stderr, result.stderr
    assert "keep retrying" in result.stderr and "are workers running" not in result.stderr


def test_progress_lines_count_done_records_when_stderr_is_not_a_terminal(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=5)
    stack.start_workers(count=1, concurrency=2)

    result = _sync(stack)

    assert result.returncode == 0, result.stderr + stack.worker_logs()
    assert "created 9" in result.stdout and "syncing" not in result.stdout
    assert "\r" not in result.stderr  # no terminal bar redrawn into a log file
