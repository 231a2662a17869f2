"""Benchmark: Postgres statements and transactions per synced record.

Counts what the sync engine sends to Postgres (SQLAlchemy's `before_cursor_execute`, `commit`
and `rollback` events on the runtime's engine) over a real sync against the simulators: the
records of an initial sync (creates), of a sync after every IFS record changed (updates), and
of tasks that find nothing to write (unchanged). Plans are counted apart: they read the id map
once per page, not per record.

`--dispatched` runs each record as a work item the dispatcher released, which its attempt
deletes in its transaction (how the workers run a plan's records).

`--profile` also profiles the initial sync's record upserts (cProfile, in this process: the
simulators' request handling is in it too, on its own threads, and not in the profile) and
prints where a record's time goes.

    python -m bench.statements [--customers 50] [--orders 200] [--dispatched] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

from bench.harness import bench_database, bench_stack, benchmark_parser
from connector.storage.work_items import WorkItems
from connector.sync import ENTITIES, JOB_FOR_ENTITY
from connector.sync.engine import Outcome, Plan, TenantSync


@dataclass
class Tally:
    """What one phase sent to Postgres."""

    statements: int = 0  # what the code executes (SQLAlchemy's before_cursor_execute)
    commits: int = 0
    rollbacks: int = 0  # of an open transaction (psycopg2 sends none otherwise)
    pings: int = 0  # pool_pre_ping's SELECT 1 per checkout, executed beside the events
    begins: int = 0  # the BEGIN psycopg2 sends before a transaction's first statement
    records: int = 0
    verbs: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def per_record(self, count: int) -> float:
        return count / self.records if self.records else 0.0

    @property
    def sent(self) -> int:
        """Everything Postgres receives: statements, pings, BEGINs, COMMITs and ROLLBACKs."""
        return self.statements + self.pings + self.begins + self.commits + self.rollbacks

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "statements_per_record": self.per_record(self.statements),
            "pings_per_record": self.per_record(self.pings),
            "sent_per_record": self.per_record(self.sent),
            "commits_per_record": self.per_record(self.commits),
            "rollbacks_per_record": self.per_record(self.rollbacks),
            "verbs": dict(self.verbs),
            "outcomes": dict(self.outcomes),
        }


class StatementCounter:
    """Counts the statements, commits and rollbacks an engine sends, into the current tally."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tally: Tally | None = None
        self.pre_ping = bool(getattr(engine.pool, "_pre_ping", False))
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)
        event.listen(engine.pool, "checkout", self._checkout)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "rollback", self._rollback)
        event.remove(self.engine.pool, "checkout", self._checkout)

    @contextmanager
    def counting(self, tally: Tally) -> Iterator[Tally]:
        self.tally = tally
        try:
            yield tally
        finally:
            self.tally = None

    def _statement(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.tally is not None:
            self.tally.statements += 1
            self.tally.verbs[statement.split(None, 1)[0].upper()] += 1
            dbapi = conn.connection.dbapi_connection
            if not _in_transaction(dbapi) and not getattr(dbapi, "autocommit", True):
                self.tally.begins += 1

    def _commit(self, _conn: Any) -> None:
        if self.tally is not None:
            self.tally.commits += 1

    def _rollback(self, conn: Any) -> None:
        if self.tally is not None and _in_transaction(conn.connection.dbapi_connection):
            self.tally.rollbacks += 1

    def _checkout(self, _dbapi: Any, _record: Any, _proxy: Any) -> None:
        # pool_pre_ping runs its SELECT 1 on every checkout (in autocommit: no BEGIN).
        if self.tally is not None and self.pre_ping:
            self.tally.pings += 1


def _in_transaction(dbapi: Any) -> bool:
    """Whether a psycopg2 connection has a transaction open (any other driver: assume so)."""
    info = getattr(dbapi, "info", None)
    status = getattr(info, "transaction_status", None)
    return status is None or status != 0  # 0 = psycopg2.extensions.TRANSACTION_STATUS_IDLE


def sync_counted(
    sync: TenantSync,
    counter: StatementCounter,
    *,
    every_key: bool = False,
    dispatched: bool = False,
    profile: cProfile.Profile | None = None,
) -> tuple[Tally, Tally]:
    """Plan and upsert every entity in this thread, as the workers would; (plans, records).

    `every_key`: upsert every IFS record, not only what the plan queued (the tasks of a
    replayed or repeated run, which find nothing to write). `dispatched`: each record is a
    stored work item released by the dispatcher (stored and released uncounted), which its
    attempt deletes, as a worker's record task does."""
    plans, records = Tally(), Tally()
    for entity in ENTITIES:
        with counter.counting(plans):
            plan = sync.plan(entity, full=every_key)
        work_items = _released_items(sync, plan) if dispatched else {}
        for item in plan.items:
            if profile is not None:
                profile.enable()
            with counter.counting(records):
                result = sync.sync_record(
                    entity,
                    item.key,
                    snapshot={"etag": item.etag, "data": item.data},
                    hint=item.hint,
                    run_id=plan.run_id,
                    work_item=work_items.get(item.key),
                )
            if profile is not None:
                profile.disable()
            records.records += 1
            records.outcomes[result.outcome.value] += 1
    return plans, records


def _released_items(sync: TenantSync, plan: Plan) -> dict[str, int]:
    """Store the plan's records as work items and release them all: their ids by key."""
    items = WorkItems(sync.runtime.database)
    tenant = sync.tenant.id
    found = [{"entity": plan.entity, "tenant": tenant, "key": item.key} for item in plan.items]
    items.add(tenant, plan.run_id, JOB_FOR_ENTITY[plan.entity], found)
    released = items.release({tenant: len(found)}).get(tenant, [])
    return {item.record_key: item.id for item in released}


def run(args: argparse.Namespace) -> int:
    phases: dict[str, Tally] = {}
    problems: list[str] = []
    with (
        bench_database() as database_url,
        bench_stack(database_url, customers=args.customers, orders=args.orders) as bench,
    ):
        stack = bench.stack
        sync = TenantSync(stack.runtime, stack.tenant)
        sync.layout()  # provisioning is once per tenant, not per record
        counter = StatementCounter(stack.runtime.database.engine)
        profile = cProfile.Profile() if args.profile else None
        try:
            dispatched = args.dispatched
            plans, phases["create"] = sync_counted(
                sync, counter, dispatched=dispatched, profile=profile
            )
            for key in stack.ifs.keys(stack.ifs.customer_type):
                stack.ifs.edit_customer(key, Name=f"Renamed {key}")
            _, phases["update"] = sync_counted(sync, counter, dispatched=dispatched)
            _, phases["unchanged"] = sync_counted(
                sync, counter, every_key=True, dispatched=dispatched
            )
        finally:
            counter.close()
        records = args.customers + args.orders
        expected = {
            "create": {Outcome.CREATED.value: records},
            "update": {Outcome.UPDATED.value: args.customers},
            "unchanged": {Outcome.UNCHANGED.value: records},
        }
        for name, outcomes in expected.items():
            if dict(phases[name].outcomes) != outcomes:
                problems.append(f"{name}: outcomes {dict(phases[name].outcomes)}, not {outcomes}")

    print(
        f"Postgres per record, {args.customers} customers + {args.orders} orders "
        "(engine events: statements, commits, rollbacks)"
    )
    print(
        f"  {'records':<10} {'n':>6} {'statements':>11} {'commits':>8} {'rollbacks':>10} "
        f"{'pings':>6} {'BEGINs':>7} {'all sent':>9}"
    )
    for name, tally in phases.items():
        print(
            f"  {name:<10} {tally.records:6d} {tally.per_record(tally.statements):11.2f} "
            f"{tally.per_record(tally.commits):8.2f} {tally.per_record(tally.rollbacks):10.2f} "
            f"{tally.per_record(tally.pings):6.2f} {tally.per_record(tally.begins):7.2f} "
            f"{tally.per_record(tally.sent):9.2f}   {dict(tally.verbs)}"
        )
    print(
        f"  plans: {plans.statements} statements, {plans.commits} commits for "
        f"{records} records planned"
    )
    if profile is not None:
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("cumulative").print_stats(45)
        print(text.getvalue())
    if args.json:
        print(json.dumps({name: tally.as_dict() for name, tally in phases.items()}))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.statements", __doc__)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--profile", action="store_true", help="profile the record upserts")
    parser.add_argument(
        "--dispatched",
        action="store_true",
        help="each record a released work item, deleted by its attempt (as workers run them)",
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
