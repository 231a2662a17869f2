"""A dry run reads the Pipedrive layout once per run, costs no more Pipedrive requests than
the reads a real run makes, and shows its progress on stderr."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.integration


def _pipedrive_requests(stack: Stack) -> Counter[str]:
    return Counter(stack.pipedrive.stats()["requests"])


def test_a_dry_run_of_150_records_costs_no_more_than_a_real_runs_reads(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=30, orders=120, seed=11)
    stack.start_workers(count=1, concurrency=2)
    # The layout (custom fields) exists once a real run provisioned it: read-only from then on.
    stack.cli("sync", stack.tenant, "--wait", "--entity", "customers", "--json")
    stack.ifs.seed(customers=30, orders=120, seed=12)  # 150 records to create again

    before = _pipedrive_requests(stack)
    dry = stack.cli("sync", stack.tenant, "--dry-run", "--json")
    dry_requests = _pipedrive_requests(stack) - before

    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert len(report["records"]) >= 150 - 30, report["counts"]
    assert "dry run: order: 0/" in dry.stderr and "checked" in dry.stderr, dry.stderr
    layout_reads = sum(n for path, n in dry_requests.items() if "Fields" in path)
    assert layout_reads <= 2, dry_requests  # organizationFields and dealFields, once each

    before = _pipedrive_requests(stack)
    real = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "300")
    real_requests = _pipedrive_requests(stack) - before
    assert real.returncode == 0, real.stderr + stack.worker_logs()
    real_reads = sum(n for path, n in real_requests.items() if path.startswith("GET"))
    assert 0 < sum(dry_requests.values()) <= real_reads, (dry_requests, real_requests)
