"""Benchmark: a worker killed with SIGKILL mid-sync, per broker (Redis, RabbitMQ).

For each broker, the same sync twice in one run: once undisturbed, once with one of the
worker processes (and its pool) killed with SIGKILL when a third of the records are done.
Prints, per broker side by side: the undisturbed run's seconds, the killed run's seconds,
the seconds from the kill to the last record done, and the killed run as a ratio of the
undisturbed one; and checks every record was synced exactly once with nothing failed.

Redis redelivers a dead worker's unacknowledged messages after the visibility timeout
(CONNECTOR_BROKER_VISIBILITY_TIMEOUT_S, production default unless --visibility-timeout);
RabbitMQ as soon as the worker's connection drops. A rerun then waits for the record locks
the dead worker held (their 60 s TTL).

    python -m bench.recovery [--customers 40] [--orders 200] [--workers 2] [--concurrency 2]
                             [--latency-ms 40] [--visibility-timeout S] [--brokers redis,rabbitmq]
                             [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from sqlalchemy import func, select

from bench.harness import RABBITMQ_URL, BenchStack, bench_database, bench_stack, benchmark_parser
from connector.pipedrive.provisioning import FieldKeys
from connector.polling import wait_until
from connector.settings import Settings
from connector.storage.models import AuditRecord
from connector.storage.tenant_state import DatabaseTenantState
from sandbox.workers import BIN, child_pids

KILL_AT = 1 / 3  # of the records done


def _records_done(bench: BenchStack) -> int:
    stack = bench.stack
    with stack.runtime.database.session() as session:
        count = session.scalar(
            select(func.count()).where(
                AuditRecord.tenant == stack.tenant, AuditRecord.record_key != "*"
            )
        )
    return int(count or 0)


def _exactly_once(bench: BenchStack, customers: int, orders: int) -> bool:
    stack = bench.stack
    value = DatabaseTenantState(stack.runtime.database).get(stack.tenant, "field_keys")
    if value is None:
        return False
    keys = FieldKeys.from_json(value)
    orgs = Counter(
        o["custom_fields"].get(keys.organization["ifs_customer_id"])
        for o in stack.pipedrive.all_records("organization")
    )
    deals = Counter(
        d["custom_fields"].get(keys.deal["ifs_order_no"])
        for d in stack.pipedrive.all_records("deal")
    )
    return (
        len(orgs) == customers
        and set(orgs.values()) == {1}
        and len(deals) == orders
        and set(deals.values()) == {1}
    )


def _one_run(
    args: argparse.Namespace, broker: str, database_url: str, kill: bool
) -> dict[str, Any]:
    env = {"CONNECTOR_BROKER_VISIBILITY_TIMEOUT_S": str(args.visibility_timeout)}
    with bench_stack(
        database_url,
        customers=args.customers,
        orders=args.orders,
        broker_url=RABBITMQ_URL if broker == "rabbitmq" else None,
        settings_env=env,
    ) as bench:
        stack = bench.stack
        stack.pipedrive.set_faults({"latency_ms": args.latency_ms})
        workers = stack.start_workers(args.workers, args.concurrency)
        for process in workers:
            stack.wait_for_pool(process, args.concurrency, timeout=60)
        started = time.monotonic()
        sync = subprocess.Popen(
            [
                *(str(BIN / "ml-connector"), "sync", stack.tenant, "--wait", "--json"),
                *("--timeout", str(args.timeout)),
            ],
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        killed_at = None
        records = args.customers + args.orders
        if kill:
            wait_until(lambda: _records_done(bench) >= records * KILL_AT, args.timeout, 0.05)
            doomed = workers[0]
            for pid in [*child_pids(doomed.pid), doomed.pid]:
                os.kill(pid, signal.SIGKILL)
            doomed.wait()
            killed_at = time.monotonic()
        out, err = sync.communicate(timeout=args.timeout + 60)
        ended = time.monotonic()
        if sync.returncode != 0:
            sys.exit(f"sync failed ({sync.returncode}):\n{err}\n{stack.worker_logs()}")
        summary = json.loads(out.strip().splitlines()[-1])
        done = summary["created"] + summary["updated"] + summary["unchanged"]
        return {
            "seconds": round(ended - started, 2),
            "kill_to_done_s": None if killed_at is None else round(ended - killed_at, 2),
            "records_done": done,
            "failed": summary["failed"],
            "exactly_once": _exactly_once(bench, args.customers, args.orders),
        }


def run(args: argparse.Namespace) -> int:
    figures: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    records = args.customers + args.orders
    with bench_database() as database_url:
        for broker in args.brokers.split(","):
            plain = _one_run(args, broker, database_url, kill=False)
            killed = _one_run(args, broker, database_url, kill=True)
            figures[broker] = {
                "undisturbed_s": plain["seconds"],
                "killed_s": killed["seconds"],
                "kill_to_done_s": killed["kill_to_done_s"],
                "ratio_killed_to_undisturbed": round(killed["seconds"] / plain["seconds"], 2),
            }
            for name, result in (("undisturbed", plain), ("killed", killed)):
                if (
                    result["records_done"] != records
                    or result["failed"]
                    or not result["exactly_once"]
                ):
                    problems.append(f"{broker} {name}: {result}")
    report = {
        "records": records,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "pipedrive_latency_ms": args.latency_ms,
        "visibility_timeout_s": args.visibility_timeout,
        "brokers": figures,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"kill -9 of 1 of {args.workers} workers at {KILL_AT:.0%} of {records} records "
            f"(Pipedrive latency {args.latency_ms} ms, Redis visibility timeout "
            f"{args.visibility_timeout:g} s)"
        )
        names = list(figures)
        print(f"{'':32}" + "".join(f"{name:>12}" for name in names))
        for label, key in (
            ("undisturbed run (s)", "undisturbed_s"),
            ("killed run (s)", "killed_s"),
            ("kill → every record done (s)", "kill_to_done_s"),
            ("killed / undisturbed", "ratio_killed_to_undisturbed"),
        ):
            print(f"{label:32}" + "".join(f"{figures[name][key]:>12}" for name in names))
        for problem in problems:
            print("PROBLEM:", problem)
    return 1 if problems else 0


def main() -> int:
    parser = benchmark_parser("bench.recovery", __doc__)
    parser.add_argument("--customers", type=int, default=40)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--latency-ms", type=int, default=40, help="Pipedrive's per request")
    parser.add_argument(
        "--visibility-timeout",
        type=float,
        default=Settings().broker_visibility_timeout_s,
        help="Redis broker's visibility timeout in seconds (default: the production default)",
    )
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
