"""Pipedrive's 403 block page through the sync engine: the tenant's Pipedrive work pauses for
every worker, records in flight are retrying (not failed), and work resumes after the pause."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from connector.errors import TransientError
from connector.pipedrive import client as pipedrive_client
from connector.pipedrive.client import rate_limit_key
from connector.storage.audit import FAILED, RETRYING, SUCCEEDED, SUPERSEDED, AuditLog
from connector.storage.idmap import CUSTOMER
from connector.sync.engine import Outcome, TenantSync
from sandbox.stack import Stack

pytestmark = pytest.mark.integration


def test_a_block_page_pauses_the_tenant_and_its_records_retry_instead_of_failing(
    stack_factory: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipedrive_client, "BLOCK_PAUSE_S", 2.0)
    stack = stack_factory(pipedrive_settings={"block_after_429s": 1, "block_seconds": 1.5})
    stack.ifs.seed(customers=2, orders=0, seed=29)
    sync = TenantSync(stack.runtime, stack.tenant)
    sync.layout()
    first, second = sorted(stack.ifs.keys(stack.ifs.customer_type))
    stack.pipedrive.faults.force_429 = 1  # the one 429 that gets the token blocked

    with pytest.raises(TransientError) as blocked:
        sync.sync_record(CUSTOMER, first)  # 429, retried after 1 s: the 403 block page
    assert blocked.value.retry_after_s == 2.0
    limiter = stack.runtime.coordination.limiter
    key = rate_limit_key(stack.tenant)
    assert limiter.paused_for(key) > 0.5
    audit = AuditLog(stack.runtime.database)
    assert [row.status for row in audit.list(tenant=stack.tenant)] == [RETRYING]

    # Another record meanwhile (any worker): it waits out the pause (here shorter than the
    # limiter's longest wait), then goes; Pipedrive sees nothing from the tenant until then.
    started = time.monotonic()
    assert sync.sync_record(CUSTOMER, second).outcome is Outcome.CREATED
    assert time.monotonic() - started > 0.5
    assert limiter.paused_for(key) == 0
    assert stack.pipedrive.stats()["blocked_403"] == 1

    # The blocked record's retry succeeds; no row of either record ever failed.
    assert sync.sync_record(CUSTOMER, first, attempt=2).outcome is Outcome.CREATED
    statuses = sorted(row.status for row in audit.list(tenant=stack.tenant))
    assert statuses == [SUCCEEDED, SUCCEEDED, SUPERSEDED]
    assert FAILED not in statuses
