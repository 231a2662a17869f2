"""Helpers of the sync engine tests: run a whole sync in the test's own thread."""

from __future__ import annotations

from connector.sync import ENTITIES
from connector.sync.engine import Outcome, TenantSync


def run_sync(sync: TenantSync, *, full: bool = False) -> dict[str, list[Outcome]]:
    """Plan and upsert every entity in order, as the workers would, in this thread."""
    outcomes: dict[str, list[Outcome]] = {}
    for entity in ENTITIES:
        plan = sync.plan(entity, full=full)
        outcomes[entity] = [
            sync.sync_record(
                entity,
                item.key,
                snapshot=item.snapshot,
                hint=item.hint,
                full=full,
                run_id=plan.run_id,
            ).outcome
            for item in plan.items
        ]
    return outcomes
