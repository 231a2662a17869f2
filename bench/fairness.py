"""Benchmark: tenant B's stage pushes and small sync while tenant A has a large throttled
backlog, side by side with B alone, in one run on one deployment.

Tenant A (a 20 requests / 2 s plan on both sides) is seeded with --a-orders orders; tenant B
(an unthrottled plan) with a few. First B alone: --pushes stage pushes (a sales user moves a
deal; measured from the receiver storing the webhook to the worker having updated the IFS
order: the event's received_at → processed_at) and a small sync (two changed orders,
`ml-connector sync --wait`: its seconds include the command's own start, and the audit rows
say when the plan and the records were done). Then A's backfill is planned, and once it is
stored whole, the same is measured for B while A's backlog waits. The first push of each
round warms the workers and is not counted. Prints both and their ratios.

Then A's own pace for --a-seconds, its backlog still large: the requests arriving at A's
Pipedrive simulator per second against its plan (20 per 2 s = 10 per second), the records
done per second, and the attempts handed back meanwhile (audit rows `retrying`, later
`superseded`: a record that went back to the store for want of tokens).

    python -m bench.fairness [--a-orders 3000] [--pushes 10] [--workers 2] [--concurrency 2]
                             [--a-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from sqlalchemy import func, select

from bench.harness import BenchStack, bench_database, bench_stack, benchmark_parser, peak_in_window
from connector.pipedrive.provisioning import PipelineIds
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.audit import RETRYING, SUPERSEDED
from connector.storage.idmap import IdMap
from connector.storage.models import AuditRecord, WebhookEvent
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.work_items import WorkItems
from sandbox.stack import Stack
from simulators.ifs.schema import customer_order
from simulators.serving import RunningServer
from webhook_receiver.app import create_app

A_BURST = 20


def _sync_seconds(deployment: Stack, tenant: str, timeout_s: float) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    result = deployment.cli(
        "sync", tenant, "--wait", "--json", "--timeout", str(timeout_s), timeout=timeout_s + 60
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"sync of {tenant} failed:\n{result.stderr}\n{deployment.worker_logs()}")
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seconds, summary


def _push_latencies(deployment: Stack, b: Stack, pushes: int, round_no: int) -> list[float]:
    """Move `pushes` of B's planned deals (a new set each round) to Released, one after the
    other; seconds from the webhook stored to the IFS order updated, per push."""
    database = deployment.runtime.database
    pipeline = DatabaseTenantState(database).get(b.tenant, "pipeline")
    assert pipeline is not None
    stage_ids = PipelineIds.from_json(pipeline).stage_ids
    target = "Released"
    latencies = []
    # One more than measured: the first push of a round warms the interactive worker's
    # processes (their clients of B), which B alone and B behind A both pay once.
    first = round_no * (pushes + 1)
    for order_no in b.ifs.keys(customer_order())[first : first + pushes + 1]:
        entry = IdMap(database).get(b.tenant, "order", order_no)
        assert entry is not None and entry.pipedrive_id is not None
        b.pipedrive.move_deal(entry.pipedrive_id, stage_id=stage_ids[target])

        def landed(no: str = order_no) -> bool:
            return bool(b.ifs.get_order(no)["Objstate"] == target)

        if not wait_until(landed, 600, 0.02):
            sys.exit(f"stage push of {order_no} did not land\n{deployment.worker_logs()}")

        def applied(deal_id: int = entry.pipedrive_id) -> WebhookEvent | None:
            with database.session() as session:
                return session.scalars(
                    select(WebhookEvent)
                    .where(
                        WebhookEvent.tenant == b.tenant,
                        WebhookEvent.entity_id == deal_id,
                        WebhookEvent.processed_at.is_not(None),
                    )
                    .order_by(WebhookEvent.id.desc())
                    .limit(1)
                ).first()

        wait_until(lambda: applied() is not None, 30)
        event = applied()
        assert event is not None and event.processed_at is not None
        latencies.append((event.processed_at - event.received_at).total_seconds())
    return latencies[1:]


def _timeline(deployment: Stack, run_id: str, started: float) -> dict[str, float]:
    """Where the small sync's time went, from its audit rows: seconds from the command's
    start (wall clock) to the plans' end, the first record's start and the last record's end."""
    from connector.storage.models import AuditRecord

    with deployment.runtime.database.session() as session:
        rows = list(
            session.scalars(select(AuditRecord).where(AuditRecord.correlation_id == run_id))
        )
    plans = [row for row in rows if row.record_key == "*"]
    records = [row for row in rows if row.record_key != "*"]

    def since(moment: Any) -> float:
        return round(moment.timestamp() - started, 3)

    timeline = {"plans_done_s": since(max(p.finished_at or p.started_at for p in plans))}
    if records:
        timeline["first_record_s"] = since(min(r.started_at for r in records))
        timeline["last_record_s"] = since(max(r.finished_at or r.started_at for r in records))
    return timeline


def _statuses(deployment: Stack) -> dict[str, int]:
    """The deployment's own tenant's audit rows by status (retrying: attempts handed back)."""
    with deployment.runtime.database.session() as session:
        rows = session.execute(
            select(AuditRecord.status, func.count())
            .where(AuditRecord.tenant == deployment.tenant)
            .group_by(AuditRecord.status)
        ).all()
    return {str(status): int(count) for status, count in rows}


def _a_pace(bench_a: BenchStack, items: WorkItems, seconds: float) -> dict[str, Any]:
    """A's use of its budget over `seconds` while its backlog is large: Pipedrive requests per
    second (arrivals at its simulator) against the plan's rate, records done per second, and
    the attempts handed back meanwhile (a `retrying` row: the record went back to the store)."""
    a = bench_a.stack
    database = a.runtime.database
    with database.session() as session:
        newest = session.scalar(select(func.max(AuditRecord.id))) or 0
    waiting_before = sum(items.backlog(a.tenant)[:2])
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    waiting_after = sum(items.backlog(a.tenant)[:2])
    stamps = bench_a.pipedrive_clock.since(started)
    with database.session() as session:
        rows = session.execute(
            select(AuditRecord.status, func.count())
            .where(AuditRecord.tenant == a.tenant, AuditRecord.id > newest)
            .group_by(AuditRecord.status)
        ).all()
    by_status = {str(status): int(count) for status, count in rows}
    attempts = sum(by_status.values())
    handed_back = by_status.get(RETRYING, 0) + by_status.get(SUPERSEDED, 0)
    in_window = [stamp for stamp in stamps if stamp < started + elapsed]
    return {
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(in_window) / elapsed, 2),
        "budget_per_s": A_BURST / 2.0,
        "budget_used": round(len(in_window) / elapsed / (A_BURST / 2.0), 3),
        "busiest_rolling_2s": peak_in_window(in_window, 2.0),
        "records_per_s": round((waiting_before - waiting_after) / elapsed, 2),
        "requests_per_record": round(len(in_window) / max(1, waiting_before - waiting_after), 2),
        "attempts": attempts,
        "handed_back": handed_back,
        "rows_by_status": by_status,
        "rate_limited_429": a.pipedrive.stats()["rate_limited_429"],
    }


def _planned(deployment: Stack) -> bool:
    """The deployment's own tenant has planned both entities of its newest run: its backlog
    is stored whole (and its plan no longer takes a worker)."""
    from connector.storage.runs import latest_run, run_progress

    database = deployment.runtime.database
    run = latest_run(database, deployment.tenant)
    progress = run_progress(database, run[0]) if run is not None else None
    return progress is not None and progress.entities_planned == 2


def _measure(
    deployment: Stack, b: Stack, args: argparse.Namespace, round_no: int
) -> dict[str, Any]:
    latencies = _push_latencies(deployment, b, args.pushes, round_no)
    for index, order_no in enumerate(b.ifs.keys(customer_order())[-2:]):
        b.ifs.edit_order(order_no, Cf_Cost_Center=f"CC-R{round_no}-{index}")
    wall_start = time.time()
    seconds, summary = _sync_seconds(deployment, b.tenant, args.timeout)
    ordered = sorted(latencies)
    return {
        "push_p50_s": statistics.median(ordered),
        "push_p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "push_max_s": ordered[-1],
        "small_sync_s": seconds,
        "small_sync_records": summary["queued"],
        "small_sync_timeline": _timeline(deployment, summary["run_id"], wall_start),
    }


def run(args: argparse.Namespace) -> int:
    with (
        bench_database() as database_url,
        bench_stack(database_url, customers=10, orders=args.a_orders, burst=A_BURST) as bench_a,
        bench_stack(database_url, customers=3, orders=2 * args.pushes + 4, seed=12) as bench_b,
    ):
        a, b = bench_a.stack, bench_b.stack
        for order_no in b.ifs.keys(customer_order()):
            b.ifs.edit_order(order_no, Objstate="Planned")
        # A receiver that follows the tenants file (B is added to it below), as deployed.
        receiving = Runtime(a.runtime.settings)
        receiving.go_live()
        app = create_app(runtime=receiving, enqueue=a.enqueue, check_broker=lambda: None)
        with RunningServer(app) as receiver:
            hook = f"{receiver.url}/webhooks/pipedrive/{b.tenant}"
            a.serve_tenant_of(b, webhook={"auth": "basic", "subscription_url": hook})
            for process in a.start_workers(args.workers, args.concurrency, queue=a.queue):
                a.wait_for_pool(process, args.concurrency, timeout=60)
            (interactive,) = a.start_workers(1, 2, queue=a.interactive_queue)
            a.wait_for_pool(interactive, 2, timeout=60)
            _sync_seconds(a, b.tenant, args.timeout)
            if a.cli("webhooks", "ensure", b.tenant).returncode != 0:
                sys.exit("webhooks ensure failed")

            alone = _measure(a, b, args, 0)

            items = WorkItems(a.runtime.database)
            if a.cli("sync", a.tenant).returncode != 0:
                sys.exit("could not start A's sync")
            if not wait_until(lambda: _planned(a), 600):
                sys.exit(f"A's backlog was never stored\n{a.worker_logs()}")
            a_waiting_before = items.backlog(a.tenant)[0]
            measured_from = time.monotonic()
            behind = _measure(a, b, args, 1)
            a_waiting_after = items.backlog(a.tenant)[0]
            a_rate = (a_waiting_before - a_waiting_after) / (time.monotonic() - measured_from)
            a_rows = _statuses(a)
            a_pace = _a_pace(bench_a, items, args.a_seconds)
            a.stop_workers()
        receiving.close()

    ratio = {key: behind[key] / alone[key] for key in alone if key.endswith("_s") and alone[key]}
    figures = {
        "a_orders": args.a_orders,
        "a_burst": f"{A_BURST}/2s",
        "a_waiting_during_b": [a_waiting_before, a_waiting_after],
        "a_records_per_s_during_b": round(a_rate, 2),
        "a_audit_rows_by_status": a_rows,
        "a_pace": a_pace,
        "alone": alone,
        "behind_a_backlog": behind,
        "ratio_behind_over_alone": ratio,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"tenant A: {args.a_orders} orders at {A_BURST} requests / 2 s")
    print(f"A's records waiting while B was measured: {a_waiting_before} -> {a_waiting_after}")
    print(f"A meanwhile: {a_rate:.2f} records/s; A's audit rows by status: {a_rows}")
    print(
        f"A's pace over {a_pace['seconds']} s: {a_pace['requests_per_s']} Pipedrive requests/s "
        f"of {a_pace['budget_per_s']:g} allowed = {a_pace['budget_used']:.3f} of its budget "
        f"(busiest rolling 2 s: {a_pace['busiest_rolling_2s']}); {a_pace['records_per_s']} "
        f"records/s, {a_pace['requests_per_record']} requests each; "
        f"{a_pace['handed_back']} of {a_pace['attempts']} attempts handed back; "
        f"429s so far {a_pace['rate_limited_429']}"
    )
    print(f"B's small sync: {alone['small_sync_records']} / {behind['small_sync_records']} records")
    for name, shown in (("alone", alone), ("behind A", behind)):
        print(f"  {name}: seconds from the command's start {shown['small_sync_timeline']}")
    print(f"{'':24} {'B alone':>10} {'behind A':>10} {'ratio':>8}")
    for key in ("push_p50_s", "push_p95_s", "push_max_s", "small_sync_s"):
        print(f"{key:24} {alone[key]:>10.3f} {behind[key]:>10.3f} {ratio.get(key, 0):>8.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.fairness", __doc__)
    parser.add_argument("--a-orders", type=int, default=3000)
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="bulk worker processes")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--a-seconds", type=float, default=30, help="how long A's own pace is measured"
    )
    parser.add_argument("--json", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
