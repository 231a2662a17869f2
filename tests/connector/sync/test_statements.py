"""What one record costs in Postgres, counted with SQLAlchemy's engine events over a real sync
(bench.statements' counter): a bound on statements and commits, not a time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.statements import StatementCounter, sync_counted
from connector.storage.work_items import WorkItems
from connector.sync.engine import TenantSync
from sandbox.stack import Stack

pytestmark = pytest.mark.integration

MAX_STATEMENTS = 8


@pytest.mark.parametrize("dispatched", [False, True], ids=["direct", "dispatched"])
def test_a_record_costs_at_most_8_statements_one_commit_and_no_ping(
    stack_factory: Callable[..., Stack], dispatched: bool
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=23)
    sync = TenantSync(stack.runtime, stack.tenant)
    sync.layout()
    counter = StatementCounter(stack.runtime.database.engine)
    try:
        _, created = sync_counted(sync, counter, dispatched=dispatched)
        for key in stack.ifs.keys(stack.ifs.customer_type):
            stack.ifs.edit_customer(key, Name=f"Renamed {key}")
        _, updated = sync_counted(sync, counter, dispatched=dispatched)
        _, unchanged = sync_counted(sync, counter, every_key=True, dispatched=dispatched)
    finally:
        counter.close()

    assert dict(created.outcomes) == {"created": 9}
    assert dict(updated.outcomes) == {"updated": 3}
    assert dict(unchanged.outcomes) == {"unchanged": 9}
    for tally in (created, updated, unchanged):
        assert tally.statements <= MAX_STATEMENTS * tally.records, tally.as_dict()
        assert tally.pings == 0
    if dispatched:  # every attempt ended its work item
        assert created.verbs["DELETE"] >= created.records
        assert WorkItems(stack.runtime.database).backlog(stack.tenant) == (0, 0)
    # The id map, the audit row, the run entry and totals (and the work item's end) commit
    # together, once per record. A record the dispatcher released creates without a commit
    # before its POST (its work item is the crash's trace); one synced without a work item
    # (CLI, replay) still commits its create intent first: nothing else would tell.
    assert created.commits == (1 if dispatched else 2) * created.records
    assert updated.commits == updated.records
    assert unchanged.commits == unchanged.records
