"""Benchmark: peak resident memory of the order plan as the number of IFS orders M grows.

Measured in a plain process and in a Celery worker's pool process, for a first run (every
order queued) and for a run that finds everything unchanged.

    python -m bench.memory [--customers 2000] [--orders 2000,20000] [--trace]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.harness import bench_database, bench_stack, benchmark_parser, vm_kib
from connector.jobs import PLAN_SYNC
from connector.polling import wait_until
from sandbox.stack import Stack, forget_queues
from sandbox.workers import child_pids

PLAN_QUEUE_SUFFIX = "-plan"
# Filling the id map is set-up, not measured: read IFS in big pages to keep it quick.
BULK = 5000


# -- the plan step in a process of its own ------------------------------------------------


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the plan's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def plan_child(tenant: str, trace: bool) -> None:
    """Build the runtime from the environment, provision the layout, then plan orders once."""
    from connector.runtime import Runtime
    from connector.settings import get_settings
    from connector.storage.idmap import ORDER
    from connector.sync.engine import TenantSync

    runtime = Runtime(get_settings())
    sync = TenantSync(runtime, tenant)
    sync.layout()
    gc.collect()
    reset = _reset_peak()
    pid = os.getpid()
    base = vm_kib(pid, "VmRSS")
    held: dict[str, int] = {}
    if trace:
        tracemalloc.start(5)
        # What the plan's bulk id-map read alone holds (the plan reads it the same way).
        entries = sync.idmap.summaries(tenant, ORDER)
        held["id_map_entries_kib"] = tracemalloc.get_traced_memory()[0] // 1024
        held["id_map_entries"] = len(entries)
        del entries
        gc.collect()
        tracemalloc.reset_peak()
    started = time.perf_counter()
    plan = sync.plan(ORDER)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "base_kib": base,
        "peak_kib": vm_kib(pid, "VmHWM"),
        "after_kib": vm_kib(pid, "VmRSS"),
        "peak_reset": reset,
        "items": len(plan.items),
        "unchanged": plan.unchanged,
        "read": plan.read,
        "seconds": seconds,
    }
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()  # taken while `plan` is still alive
        result.update(held)
        result["traced_peak_kib"] = peak // 1024
        result["traced_now_kib"] = current // 1024
        result["top"] = [
            f"{stat.size // 1024} KiB  {stat.traceback[0].filename.rsplit('/', 2)[-1]}:"
            f"{stat.traceback[0].lineno}"
            for stat in snapshot.statistics("lineno")[:5]
        ]
    print(json.dumps(result))
    runtime.close()


def run_plan_child(stack: Stack, trace: bool = False) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.memory", "--plan-child", stack.tenant]
    if trace:
        command.append("--trace")
    result = subprocess.run(command, env=stack.env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        sys.exit(f"plan child failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


# -- the plan step inside a real Celery worker ---------------------------------------------


def run_worker_plan(stack: Stack, expected: int) -> dict[str, Any]:
    """plan_sync in a worker with one pool process; the record tasks it queues go to the
    stack's queue, which nothing consumes, so the pool process does nothing but the plan."""
    import redis
    from celery import Celery
    from sqlalchemy import select

    from connector.storage.models import AuditRecord

    plan_queue = stack.queue + PLAN_QUEUE_SUFFIX
    client = redis.Redis.from_url(stack.env["CONNECTOR_REDIS_URL"])
    (worker,) = stack.start_workers(1, 1, queue=plan_queue)
    try:
        stack.wait_for_pool(worker, 1, timeout=60)
        time.sleep(1.0)  # let the pool process finish starting up
        (pool,) = child_pids(worker.pid)
        base = {"main": vm_kib(worker.pid, "VmRSS"), "pool": vm_kib(pool, "VmRSS")}
        sender = Celery(broker=stack.env["CONNECTOR_BROKER_URL"])
        started = time.monotonic()
        sender.send_task(
            PLAN_SYNC,
            kwargs={"tenant": stack.tenant, "entity": "order"},
            queue=plan_queue,
        )
        query = select(AuditRecord.id).where(
            AuditRecord.tenant == stack.tenant, AuditRecord.operation == "plan"
        )

        def planned() -> bool:
            with stack.runtime.database.session() as session:
                return session.scalars(query).first() is not None

        if not wait_until(lambda: planned() and client.llen(stack.queue) >= expected, 600):
            raise RuntimeError("the worker's plan did not finish:\n" + stack.worker_logs())
        seconds = time.monotonic() - started
        time.sleep(0.5)
        queued_bytes = client.memory_usage(stack.queue, samples=0) or 0
        message_bytes = sum(len(message) for message in client.lrange(stack.queue, 0, -1))
        return {
            "base_main_kib": base["main"],
            "base_pool_kib": base["pool"],
            "peak_main_kib": vm_kib(worker.pid, "VmHWM"),
            "peak_pool_kib": vm_kib(pool, "VmHWM"),
            "queued": client.llen(stack.queue),
            "queued_redis_kib": int(queued_bytes) // 1024,
            "message_bytes": message_bytes,
            "seconds": seconds,
        }
    finally:
        stack.stop_workers()
        forget_queues(client, stack.queue, plan_queue)


# -- an id map in which every order is known and unchanged ---------------------------------


def fill_id_map(stack: Stack) -> float:
    """Write the id map a completed sync would leave (real payloads and hashes) in bulk."""
    from connector.storage.idmap import CUSTOMER, ORDER, IdMap
    from connector.sync.engine import TenantSync
    from connector.sync.specs import CUSTOMERS, ORDERS

    started = time.perf_counter()
    sync = TenantSync(stack.runtime, stack.tenant)
    layout = sync.layout()
    tenant = stack.tenant
    customers_set, orders_set = CUSTOMERS.ifs_set(sync.tenant), ORDERS.ifs_set(sync.tenant)
    idmap = IdMap(stack.runtime.database)
    idmap.load(
        tenant,
        (
            (CUSTOMER, record.key, number, record.etag, None)
            for number, record in enumerate(
                sync.ifs.iter_records(customers_set, page_size=BULK), start=1
            )
        ),
    )
    customers = idmap.summaries(tenant, CUSTOMER)
    # load() replaces the tenant's whole map: the customers go in again with the orders.
    rows: list[tuple[str, str, int, str, dict[str, Any] | None]] = [
        (CUSTOMER, key, int(state.pipedrive_id or 0), state.etag or "", None)
        for key, state in customers.items()
    ]
    for number, record in enumerate(sync.ifs.iter_records(orders_set, page_size=BULK), start=1):
        payload = sync._planned_payload(ORDERS, record.data, layout, customers)
        assert payload is not None
        rows.append((ORDER, record.key, number, record.etag, payload))
    idmap.load(tenant, rows)
    return time.perf_counter() - started


# -- the benchmark --------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


def run(args: argparse.Namespace) -> int:
    sizes = [int(part) for part in args.orders.split(",")]
    rows: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    traced: dict[str, dict[str, Any]] = {}
    with bench_database() as database_url:
        for orders in sizes:
            with bench_stack(database_url, customers=args.customers, orders=orders) as bench:
                stack = bench.stack
                trace = orders == max(sizes) and args.trace
                first = run_plan_child(stack)
                if trace:
                    traced["first run"] = run_plan_child(stack, trace=True)
                worker = run_worker_plan(stack, expected=first["items"])
                fill_seconds = fill_id_map(stack)
                again = run_plan_child(stack)
                if trace:
                    traced["all unchanged"] = run_plan_child(stack, trace=True)
                rows.append((orders, first, worker, again))
                print(f"M={orders}: measured (id map filled in {fill_seconds:.1f} s)", flush=True)

    print()
    print(
        f"order plan, {args.customers} customers; peak RSS (VmHWM) and growth over the "
        "process's RSS just before planning"
    )
    header = (
        f"{'M orders':>9} | {'plan process: first run':^34} | {'worker pool process':^34} | "
        f"{'plan process: all unchanged':^34}"
    )
    print(header)
    for orders, first, worker, again in rows:
        print(
            f"{orders:>9} | peak {mib(first['peak_kib'])} "
            f"+{mib(first['peak_kib'] - first['base_kib'])} {first['seconds']:4.1f}s | "
            f"peak {mib(worker['peak_pool_kib'])} "
            f"+{mib(worker['peak_pool_kib'] - worker['base_pool_kib'])} "
            f"{worker['seconds']:4.1f}s | "
            f"peak {mib(again['peak_kib'])} "
            f"+{mib(again['peak_kib'] - again['base_kib'])} {again['seconds']:4.1f}s"
        )
    for orders, first, worker, again in rows:
        print(
            f"M={orders}: first plan queued {first['items']} (read {first['read']}); "
            f"worker queued {worker['queued']} tasks of "
            f"{worker['message_bytes'] / max(1, worker['queued']) / 1024:.1f} KiB each "
            f"({worker['queued_redis_kib'] / 1024:.1f} MiB in Redis), "
            f"worker main process peak {mib(worker['peak_main_kib']).strip()}; "
            f"unchanged run queued {again['items']}, unchanged {again['unchanged']}"
        )
    if len(rows) >= 2:
        (m0, f0, w0, a0), (m1, f1, w1, a1) = rows[0], rows[-1]

        def per_order(before: dict[str, Any], after: dict[str, Any], peak: str, base: str) -> float:
            grown = (after[peak] - after[base]) - (before[peak] - before[base])
            return 1024 * grown / (m1 - m0)

        print(
            f"peak growth per extra order (M={m0} -> {m1}): first plan "
            f"{per_order(f0, f1, 'peak_kib', 'base_kib'):,.0f} B, worker pool process "
            f"{per_order(w0, w1, 'peak_pool_kib', 'base_pool_kib'):,.0f} B, "
            f"unchanged plan {per_order(a0, a1, 'peak_kib', 'base_kib'):,.0f} B"
        )
    for name, figures in traced.items():
        print(
            f"tracemalloc, M={max(sizes)}, {name}: Python heap peak "
            f"{mib(figures['traced_peak_kib']).strip()}, held after plan() "
            f"{mib(figures['traced_now_kib']).strip()}; the order id map alone "
            f"({figures['id_map_entries']} entries) holds "
            f"{mib(figures['id_map_entries_kib']).strip()}; largest holders after plan():"
        )
        for line in figures["top"]:
            print(f"    {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.memory", __doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument(
        "--orders", default="2000,20000", help="comma-separated order counts M to measure"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="at the largest M, also plan under tracemalloc and list the biggest holders "
        "(about two extra minutes)",
    )
    parser.add_argument("--plan-child", metavar="TENANT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan_child:
        plan_child(args.plan_child, args.trace)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
