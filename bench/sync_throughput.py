"""Benchmark: throughput of a full initial IFS → Pipedrive sync through real Celery workers.

Then a no-change re-sync; as many bare Celery no-op tasks (bench.noop) run through the same
workers, broker and settings right before and right after (their mean rate counts). Prints
records/s and its ratio to no-op tasks/s, request and token counts, and the peak Pipedrive
burst against the configured limit.

`--batch 1,10` and `--task-events on,off` run the whole measurement once per combination
(a fresh stack each, back to back) and end with a table of them: records per message
(CONNECTOR_DISPATCH_BATCH; 1 = one message per record) and Celery's task events
(CONNECTOR_TASK_EVENTS), side by side under the same load.

    python -m bench.sync_throughput [--customers 500] [--orders 2000] [--burst 1000]
                                    [--workers 2] [--concurrency 2]
                                    [--batch 10] [--task-events on]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    REDIS_URL,
    BenchStack,
    bench_database,
    bench_stack,
    benchmark_parser,
    peak_in_window,
)
from bench.noop import NOOP
from connector.polling import wait_until

PIPEDRIVE_WINDOW_S = 2.0  # Pipedrive's burst window (see BURST_WINDOW_S in client.py)


def run_sync(bench: BenchStack, timeout_s: float) -> tuple[dict[str, Any], float, float]:
    """Run `ml-connector sync --wait --json`; (summary, wall seconds, monotonic start)."""
    stack = bench.stack
    started = time.monotonic()
    result = stack.cli(
        "sync",
        stack.tenant,
        "--wait",
        "--json",
        "--timeout",
        str(timeout_s),
        timeout=timeout_s + 60,
    )
    ended = time.monotonic()
    if result.returncode not in (0, 2):
        sys.exit(f"sync failed ({result.returncode}):\n{result.stderr}\n{stack.worker_logs()}")
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary, ended - started, started


def worker_cpu_s(bench: BenchStack) -> float:
    """CPU seconds (user + system) the worker processes and their pools have used so far: a
    cost per record or per task that moves far less with the machine's load than a rate."""
    import os

    from sandbox.workers import child_pids

    ticks = 0
    for process in bench.stack.workers.processes:
        for pid in [process.pid, *child_pids(process.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_noops(bench: BenchStack, count: int, timeout_s: float, task_events: bool) -> float:
    """Seconds from sending the first of `count` bare no-op tasks to the last one done (sent
    with the workers' setting of task events, as the dispatcher sends records)."""
    from workers.app import create_celery_app

    stack = bench.stack
    app = create_celery_app(stack.runtime.settings.model_copy(update={"task_events": task_events}))
    counter = f"mlc-bench-noop:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(NOOP, kwargs={"counter": counter}, producer=producer)
        if not wait_until(
            lambda: int(client.get(counter) or 0) >= count, timeout=timeout_s, interval=0.01
        ):
            sys.exit(f"no-op tasks: {client.get(counter)!r} of {count} ran\n{stack.worker_logs()}")
        return time.monotonic() - started
    finally:
        client.delete(counter)
        client.close()


def events_rounds(bench: BenchStack, count: int, rounds: int, timeout_s: float) -> None:
    """No-op bursts with Celery's task events on and off in turns, on the same workers (the
    events toggled by Celery's remote control), so both see the same load: what the events
    cost per task."""
    from workers.app import create_celery_app

    control = create_celery_app(bench.stack.runtime.settings).control
    seen: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for events in (True, False):
            (control.enable_events if events else control.disable_events)()
            time.sleep(0.5)  # the broadcast reaches every worker
            seen[events].append(count / run_noops(bench, count, timeout_s, events))
    for events, rates in seen.items():
        print(
            f"  no-op tasks/s, task events {'on ' if events else 'off'}: median "
            f"{statistics.median(rates):7.1f}  ({', '.join(f'{r:.0f}' for r in rates)})"
        )
    on, off = statistics.median(seen[True]), statistics.median(seen[False])
    print(f"  task events cost per task: {1000 / on - 1000 / off:.2f} ms of {1000 / on:.2f} ms")


def run(args: argparse.Namespace) -> int:
    rows = []
    status = 0
    for batch in args.batch:
        for events in args.task_events:
            if len(args.batch) * len(args.task_events) > 1:
                print(f"== batch {batch}, task events {events}")
            env = {
                "CONNECTOR_DISPATCH_BATCH": str(batch),
                "CONNECTOR_TASK_EVENTS": "true" if events == "on" else "false",
            }
            figures, problems = run_once(args, env)
            rows.append((batch, events, figures))
            status = status or (1 if problems else 0)
    if len(rows) > 1:
        print("\nbatch  events  records/s  no-op tasks/s  ratio  CPU ms/record  CPU ms/no-op")
        for batch, events, figures in rows:
            print(
                f"{batch:5d}  {events:6s}  {figures['records_per_s']:9.1f}  "
                f"{figures['noop_tasks_per_s']:13.1f}  {figures['ratio']:5.3f}  "
                f"{figures['worker_cpu_ms_per_record']:13.2f}  "
                f"{figures['worker_cpu_ms_per_noop']:12.2f}"
            )
    return status


def run_once(args: argparse.Namespace, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    records = args.customers + args.orders
    problems: list[str] = []
    with (
        bench_database() as database_url,
        bench_stack(
            database_url,
            customers=args.customers,
            orders=args.orders,
            burst=args.burst,
            settings_env=env,
        ) as bench,
    ):
        stack = bench.stack
        for process in stack.start_workers(args.workers, args.concurrency, include=("bench.noop",)):
            stack.wait_for_pool(process, args.concurrency, timeout=60)

        events = env["CONNECTOR_TASK_EVENTS"] == "true"
        # No-op tasks right before and right after the syncs: on a shared machine the load
        # moves within a run, and their mean is what the sync saw more nearly than either.
        cpu_0 = worker_cpu_s(bench)
        noop_before = run_noops(bench, records, args.timeout, events)
        cpu_1 = worker_cpu_s(bench)
        first, wall, started = run_sync(bench, args.timeout)
        cpu_2 = worker_cpu_s(bench)
        pd = stack.pipedrive.stats()
        ifs_requests = bench.ifs_requests()
        stamps = bench.pipedrive_clock.since(started)
        peak = peak_in_window(stamps, PIPEDRIVE_WINDOW_S)
        active = (max(stamps) - min(stamps)) if len(stamps) > 1 else 0.0
        if first["created"] != records or first["failed"]:
            problems.append(
                f"first sync: created {first['created']} of {records}, failed {first['failed']}"
            )
        in_pipedrive = pd["records"]
        if (
            in_pipedrive.get("organization") != args.customers
            or in_pipedrive.get("deal") != args.orders
        ):
            problems.append(
                f"Pipedrive holds {in_pipedrive}, expected "
                f"{args.customers} organizations and {args.orders} deals"
            )

        writes_before = bench.pipedrive_writes()
        pd_requests_before = pd["requests_total"]
        second, resync_wall, _ = run_sync(bench, args.timeout)
        resync_writes = bench.pipedrive_writes() - writes_before
        resync_pd_requests = stack.pipedrive.stats()["requests_total"] - pd_requests_before
        if resync_writes or second["created"] or second["updated"] or second["failed"]:
            problems.append(f"no-change re-sync wrote {resync_writes} times: {second}")
        cpu_3 = worker_cpu_s(bench)
        noop_after = run_noops(bench, records, args.timeout, events)
        cpu_4 = worker_cpu_s(bench)
        if args.events_rounds:
            events_rounds(bench, records, args.events_rounds, args.timeout)

    cli_seconds = float(first.get("seconds", wall))
    print(
        f"initial sync: {args.customers} customers + {args.orders} orders = {records} records, "
        f"{args.workers} workers x concurrency {args.concurrency}, burst limit {args.burst}"
    )
    print(
        f"  total seconds         {cli_seconds:8.1f}  (CLI's own count; {wall:.1f} incl. "
        "CLI start-up)"
    )
    records_per_s = records / cli_seconds
    noops_per_s = (records / noop_before + records / noop_after) / 2
    print(f"  records/s             {records_per_s:8.1f}")
    print(
        f"  bare no-op tasks/s    {noops_per_s:8.1f}  ({records} tasks before and after the syncs: "
        f"{records / noop_before:.1f}, {records / noop_after:.1f}; same workers, broker, settings)"
    )
    print(f"  records/s / no-op/s   {records_per_s / noops_per_s:8.3f}")
    # Pool processes are replaced only when one dies, so the sums are of the same processes.
    record_ms = 1000 * (cpu_2 - cpu_1) / records
    noop_ms = 1000 * ((cpu_1 - cpu_0) + (cpu_4 - cpu_3)) / (2 * records)
    print(
        f"  worker CPU            {record_ms:8.2f} ms per record, {noop_ms:.2f} ms per no-op "
        f"task (cost ratio {noop_ms / record_ms:.3f}; the workers' own processes only)"
    )
    print(
        f"  pipedrive requests    {pd['requests_total']:8d}  ({pd['requests_total'] / records:.2f}"
        " per record)"
    )
    print(
        f"  pipedrive tokens      {pd['tokens_spent']:8d}  ({pd['tokens_spent'] / records:.2f}"
        " per record)"
    )
    print(f"  pipedrive 429s        {pd['rate_limited_429']:8d}")
    print(f"  ifs requests          {ifs_requests:8d}  ({ifs_requests / records:.3f} per record)")
    print(f"  requests per record   {(pd['requests_total'] + ifs_requests) / records:8.2f}")
    mean_rate = len(stamps) / active if active else 0.0
    print(
        f"  peak pipedrive reqs in any {PIPEDRIVE_WINDOW_S:.0f} s window: {peak} "
        f"(limit {args.burst}, {100 * peak / args.burst:.0f}%); "
        f"mean {mean_rate:.1f} req/s over {active:.1f} s "
        f"(limit allows {args.burst / PIPEDRIVE_WINDOW_S:.0f} req/s)"
    )
    print(
        f"no-change re-sync: {float(second.get('seconds', resync_wall)):.1f} s, "
        f"writes {resync_writes}, pipedrive requests {resync_pd_requests}, "
        f"unchanged {second['unchanged']}"
    )
    figures = {
        "records": records,
        "seconds": cli_seconds,
        "records_per_s": records_per_s,
        "noop_tasks_per_s": noops_per_s,
        "ratio": records_per_s / noops_per_s,
        "worker_cpu_ms_per_record": record_ms,
        "worker_cpu_ms_per_noop": noop_ms,
        "pipedrive_requests": pd["requests_total"],
        "pipedrive_tokens": pd["tokens_spent"],
        "pipedrive_429": pd["rate_limited_429"],
        "ifs_requests": ifs_requests,
        "peak_2s": peak,
        "burst": args.burst,
        "resync_seconds": second.get("seconds"),
        "resync_writes": resync_writes,
        **env,
    }
    if args.json:
        print(json.dumps(figures))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return figures, problems


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.sync_throughput", __doc__)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument(
        "--burst",
        type=int,
        default=1000,
        help="Pipedrive burst limit per 2 s, set on the tenant and the simulator alike "
        "(20 = the real Essential plan's API token); the search limit is max(10, burst/2)",
    )
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per sync run")
    parser.add_argument(
        "--batch",
        type=_numbers,
        default=[10],
        help="records of one tenant per message (CONNECTOR_DISPATCH_BATCH), a comma list to "
        "compare; 1 = one message per record",
    )
    parser.add_argument(
        "--task-events",
        type=lambda text: text.split(","),
        default=["on"],
        help="Celery task events (CONNECTOR_TASK_EVENTS): on, off, or on,off to compare",
    )
    parser.add_argument(
        "--events-rounds",
        type=int,
        default=0,
        help="then this many rounds of no-op tasks with task events on and off in turns "
        "(Celery's remote control toggles them on the same workers)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line per run")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
