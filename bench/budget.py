"""Benchmark: how much of Pipedrive's burst budget is used when the limit binds.

For each plan (requests per 2 s), K worker processes send Pipedrive requests through the
connector's own client (the shared Redis limiter, Pipedrive's feedback, the one retry policy)
to a Pipedrive simulator that enforces the plan over exact rolling 2 s windows of arrivals,
as Pipedrive does; every API request's arrival is stamped at the simulator's WSGI entry.

`--mode client` (default): each process calls GET /v1/users/me as fast as its limiter lets
it, for --seconds: the limit binds by construction, whatever the machine's load.
`--mode sync`: a whole sync through K real Celery worker processes (concurrency 1), enough
records for about --seconds at the plan's rate; on a loaded 2-core machine the record work,
not the limit, may bind (the per-window counts show it).

Prints the utilisation (mean arrival rate / the rate the plan allows) over the steady part
and in whole 2 s windows, the busiest rolling 2 s window, and the 429s and 403s.

    python -m bench.budget [--plans 20,100] [--seconds 30] [--workers 4] [--mode client|sync]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import uuid
from typing import Any

from bench.harness import (
    REDIS_URL,
    RequestClock,
    bench_database,
    bench_stack,
    benchmark_parser,
    peak_in_window,
)
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


def _client_process(
    url: str, token: str, tenant_id: str, burst: int, seconds: float, ready: Any, go: Any
) -> None:
    """One worker process: once every process is `ready` and `go` is set, users/me through
    the tenant's client for `seconds`."""
    import redis

    from connector.pipedrive.auth import ApiTokenAuth
    from connector.pipedrive.client import (
        PipedriveClient,
        pipedrive_acquirer,
        pipedrive_feedback,
    )
    from connector.ratelimit import RateLimited, RedisRateLimiter
    from connector.tenants import TenantConfig

    tenant = TenantConfig.model_validate(
        {
            "id": tenant_id,
            "ifs": {"base_url": "http://127.0.0.1:9", "namespace": "unused"},
            "pipedrive": {
                "api_domain": url,
                "burst_limit": burst,
                "search_burst_limit": max(10, burst // 2),
                "daily_budget": 100_000_000,
            },
        }
    )
    limiter = RedisRateLimiter(redis.Redis.from_url(REDIS_URL), prefix="mlc:rl:")
    client = PipedriveClient(
        url,
        auth=ApiTokenAuth(token),
        acquire=pipedrive_acquirer(limiter, tenant.id, tenant.pipedrive, max_wait_s=5.0),
        on_response=pipedrive_feedback(limiter, tenant.id, tenant.pipedrive),
    )
    ready.release()
    go.wait()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            client.users_me()
        except RateLimited:
            continue


def measure_client(burst: int, seconds: float, workers: int) -> dict[str, Any]:
    from sandbox.simulators import Simulators, fast_pipedrive_settings
    from sandbox.stack import forget_redis_keys
    from simulators.ifs.settings import IfsSimSettings

    settings = fast_pipedrive_settings()
    settings.api_token_burst = settings.oauth_burst = burst
    simulators = Simulators(IfsSimSettings(), settings).start()
    tenant_id = f"b{uuid.uuid4().hex[:10]}"
    try:
        app = simulators.pipedrive_app
        clock = RequestClock(app.wsgi_app)
        app.wsgi_app = clock  # type: ignore[method-assign]
        context = multiprocessing.get_context("spawn")
        ready, go = context.Semaphore(0), context.Event()
        url, token = simulators.pipedrive_url, settings.api_tokens[0]
        processes = [
            context.Process(
                target=_client_process,
                args=(url, token, tenant_id, burst, seconds, ready, go),
            )
            for _ in range(workers)
        ]
        for process in processes:
            process.start()
        for _ in processes:  # start-up (imports) is not part of the measurement
            ready.acquire(timeout=120)
        started = time.monotonic()
        go.set()
        for process in processes:
            process.join(timeout=seconds + 60)
        stats = simulators.pipedrive.stats()
        stamps = clock.since(started)
    finally:
        simulators.stop()
        forget_redis_keys(REDIS_URL, tenant_id)
    figures = utilisation(stamps, stamps, burst)
    figures.update(
        burst=burst,
        records=None,
        rate_limited_429=stats["rate_limited_429"],
        blocked_403=stats["blocked_403"],
    )
    return figures


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
        if args.mode == "client":
            figures = measure_client(burst, args.seconds, args.workers)
        else:
            # Enough records to keep the limit binding for about --seconds.
            records = int(burst / WINDOW_S * args.seconds)
            figures = measure(burst, records, args.workers, args.timeout)
            if figures["created"] != records or figures["failed"]:
                problems.append(f"plan {burst}: created {figures['created']} of {records}")
        results.append(figures)
        if figures["rate_limited_429"] or figures["blocked_403"]:
            problems.append(
                f"plan {burst}: {figures['rate_limited_429']} x 429, {figures['blocked_403']} x 403"
            )
    print(
        f"Pipedrive burst budget used when the limit binds, {args.workers} worker processes, "
        f"mode {args.mode} (arrivals at the simulator, exact rolling {WINDOW_S:.0f} s windows)"
    )
    for figures in results:
        print(
            f"  plan {figures['burst']:>3} / 2 s: utilisation {figures['steady_utilisation']:.3f} "
            f"over {figures['steady_seconds']:.1f} s steady "
            f"({figures['window_utilisation']:.3f} in {figures['whole_windows']} whole 2 s "
            f"windows, {figures['emptiest_window']}..{figures['fullest_window']} per window); "
            f"busiest rolling 2 s: {figures['peak_rolling_2s']}; "
            f"429s {figures['rate_limited_429']}, 403s {figures['blocked_403']}; "
            f"{figures['requests']} requests"
            + (f" for {figures['records']} records" if figures["records"] else "")
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
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--mode", choices=("client", "sync"), default="client")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per sync run")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
