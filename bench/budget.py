"""Benchmark: how much of Pipedrive's burst budget a sync uses when the limit binds.

For each plan (requests per 2 s), a sync through K real Celery worker processes against a
Pipedrive simulator that enforces the plan over exact rolling 2 s windows of arrivals (as
Pipedrive does); every API request's arrival is stamped at the simulator's WSGI entry.
Prints the utilisation (mean arrival rate / the rate the plan allows) over the steady part of
the run and in whole 2 s windows, the busiest rolling 2 s window, and the 429s and 403s.

    python -m bench.budget [--plans 20,100] [--seconds 30] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bench.harness import bench_database, bench_stack, benchmark_parser, peak_in_window
from bench.sync_throughput import run_sync

WINDOW_S = 2.0  # Pipedrive's burst window, and the simulator's


def utilisation(stamps: list[float], writes: list[float], burst: int) -> dict[str, Any]:
    """Arrivals against the plan while the record tasks run (the limit binds): from one window
    after the first record's write (a fresh window lets a whole burst through at once; the
    plan before it reads IFS) to the last write."""
    ordered = sorted(stamps)
    allowed_per_s = burst / WINDOW_S
    start, end = min(writes) + WINDOW_S, max(writes)
    steady = [stamp for stamp in ordered if start <= stamp < end]
    bins = int((end - start) // WINDOW_S)
    counts = [0] * bins
    for stamp in steady:
        index = int((stamp - start) // WINDOW_S)
        if index < bins:
            counts[index] += 1
    return {
        "requests": len(ordered),
        "steady_seconds": end - start,
        "steady_utilisation": len(steady) / (end - start) / allowed_per_s,
        "whole_windows": bins,
        "window_utilisation": (sum(counts) / bins / burst) if bins else 0.0,
        "fullest_window": max(counts, default=0),
        "emptiest_window": min(counts, default=0),
        "peak_rolling_2s": peak_in_window(ordered, WINDOW_S),
        "per_window": counts,
    }


def measure(burst: int, records: int, workers: int, timeout_s: float) -> dict[str, Any]:
    customers = max(1, records // 5)
    with (
        bench_database() as database_url,
        bench_stack(
            database_url,
            customers=customers,
            orders=records - customers,
            burst=burst,
            search_burst=max(10, burst // 2),
        ) as bench,
    ):
        stack = bench.stack
        for process in stack.start_workers(workers, 1):
            stack.wait_for_pool(process, 1, timeout=60)
        summary, _, started = run_sync(bench, timeout_s)
        stats = stack.pipedrive.stats()
        stamps = bench.pipedrive_clock.since(started)
        writes = bench.pipedrive_clock.writes_since(started)
    figures = utilisation(stamps, writes, burst)
    figures.update(
        burst=burst,
        records=records,
        created=summary.get("created"),
        failed=summary.get("failed"),
        rate_limited_429=stats["rate_limited_429"],
        blocked_403=stats["blocked_403"],
    )
    return figures


def run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    results = []
    for burst in args.plans:
        # Enough records to keep the limit binding for about --seconds.
        records = int(burst / WINDOW_S * args.seconds)
        figures = measure(burst, records, args.workers, args.timeout)
        results.append(figures)
        if figures["created"] != records or figures["failed"]:
            problems.append(f"plan {burst}: created {figures['created']} of {records}")
        if figures["rate_limited_429"] or figures["blocked_403"]:
            problems.append(
                f"plan {burst}: {figures['rate_limited_429']} x 429, {figures['blocked_403']} x 403"
            )
    print(
        f"Pipedrive burst budget used when the limit binds, {args.workers} worker processes "
        f"(arrivals at the simulator, exact rolling {WINDOW_S:.0f} s windows)"
    )
    for figures in results:
        print(
            f"  plan {figures['burst']:>3} / 2 s: utilisation {figures['steady_utilisation']:.3f} "
            f"over {figures['steady_seconds']:.1f} s steady "
            f"({figures['window_utilisation']:.3f} in {figures['whole_windows']} whole 2 s "
            f"windows, {figures['emptiest_window']}..{figures['fullest_window']} per window); "
            f"busiest rolling 2 s: {figures['peak_rolling_2s']}; "
            f"429s {figures['rate_limited_429']}, 403s {figures['blocked_403']}; "
            f"{figures['requests']} requests for {figures['records']} records"
        )
    if args.json:
        print(json.dumps(results))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.budget", __doc__)
    parser.add_argument(
        "--plans",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[20, 100],
        help="burst limits per 2 s to measure, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="binding time per plan")
    parser.add_argument("--workers", type=int, default=4, help="Celery worker processes")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per sync run")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
