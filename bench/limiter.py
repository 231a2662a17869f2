"""Benchmark: grants/s and acquire latency of the Redis and the in-process rate limiter.

One key, from one and from four processes (threads for the in-process limiter), with a limit
that never binds (the limiter's own cost) and with one that does (waiting, accuracy).

    python -m bench.limiter [--seconds 3] [--workers 4]
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bench.harness import REDIS_URL, benchmark_parser, peak_in_window
from connector.ratelimit import Limit, LocalRateLimiter, RateLimiter, RedisRateLimiter, acquire

KEY = "bench:one-key"
# "Unbound": a limit that never refuses, so the figure is the limiter's own cost per grant.
UNBOUND = Limit(1_000_000_000, 2.5, "burst")
# "Bound": Pipedrive's burst shape with a small capacity, so callers must wait for tokens.
BOUND = Limit(100, 2.0, "burst")


class StartSignal(Protocol):
    """A threading or multiprocessing Event: every caller starts the clock together."""

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass
class Samples:
    latencies_s: list[float]
    grant_stamps: list[float]


def _make_redis(prefix: str) -> RateLimiter:
    import redis

    return RedisRateLimiter(redis.Redis.from_url(REDIS_URL), prefix=prefix)


def _loop(limiter: RateLimiter, limit: Limit, start: StartSignal, seconds: float) -> Samples:
    """Acquire one token at a time until `seconds` are over; latency includes any waiting."""
    latencies: list[float] = []
    stamps: list[float] = []
    start.wait()
    deadline = time.monotonic() + seconds
    bound = limit is BOUND
    while True:
        began = time.perf_counter()
        if bound:
            acquire(limiter, KEY, 1, [limit], max_wait_s=60.0)
        else:
            wait = limiter.try_acquire(KEY, 1, [limit])
            if wait > 0:
                raise RuntimeError("the unbound limit refused a grant")
        latencies.append(time.perf_counter() - began)
        now = time.monotonic()
        stamps.append(now)
        if now >= deadline:
            return Samples(latencies, stamps)


def _process_main(
    backend: str, prefix: str, bound: bool, start: StartSignal, seconds: float, out: Any
) -> None:
    limiter = _make_redis(prefix) if backend == "redis" else LocalRateLimiter()
    out.put(_loop(limiter, BOUND if bound else UNBOUND, start, seconds))


def in_processes(backend: str, prefix: str, bound: bool, count: int, seconds: float) -> Samples:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    out = context.Queue()
    processes = [
        context.Process(target=_process_main, args=(backend, prefix, bound, start, seconds, out))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    time.sleep(0.5)  # let every process connect before the clock starts
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    return _merge(results)


def in_threads(make: Callable[[], RateLimiter], bound: bool, count: int, seconds: float) -> Samples:
    limiter = make()
    start = threading.Event()
    results: list[Samples] = []
    lock = threading.Lock()

    def work() -> None:
        samples = _loop(limiter, BOUND if bound else UNBOUND, start, seconds)
        with lock:
            results.append(samples)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join()
    return _merge(results)


def _merge(results: list[Samples]) -> Samples:
    return Samples(
        [value for result in results for value in result.latencies_s],
        [value for result in results for value in result.grant_stamps],
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, samples: Samples, bound: bool) -> str:
    stamps = samples.grant_stamps
    span = max(stamps) - min(stamps) if len(stamps) > 1 else 0.0
    rate = len(stamps) / span if span else 0.0
    p50 = 1e6 * statistics.median(samples.latencies_s)
    p99 = 1e6 * _percentile(samples.latencies_s, 0.99)
    line = f"  {name:<34} {rate:10,.0f} grants/s   p50 {p50:9.0f} µs   p99 {p99:9.0f} µs"
    if bound:
        peak = peak_in_window(stamps, BOUND.window_s)
        line += f"   peak {peak} in any {BOUND.window_s:.0f} s (limit {BOUND.capacity})"
    return line


def _cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("bench.limiter", __doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each unbound run")
    parser.add_argument("--bound-seconds", type=float, default=6.0, help="each bound run")
    parser.add_argument("--workers", type=int, default=4, help="processes / threads in parallel")
    args = parser.parse_args(argv)
    n = args.workers
    prefix = f"mlc-bench:{uuid.uuid4().hex[:12]}:"
    counter = iter(range(1000))

    def fresh() -> str:
        # A fresh prefix per run, so one run's grants never count against the next one's.
        return f"{prefix}{next(counter)}:"

    try:
        print(f"unbound: try_acquire on one key, limit never refuses ({args.seconds:.0f} s each)")
        print(
            report(
                "redis, 1 process", in_processes("redis", fresh(), False, 1, args.seconds), False
            )
        )
        print(
            report(
                f"redis, {n} processes",
                in_processes("redis", fresh(), False, n, args.seconds),
                False,
            )
        )
        print(
            report("local, 1 thread", in_threads(LocalRateLimiter, False, 1, args.seconds), False)
        )
        print(
            report(
                f"local, {n} threads", in_threads(LocalRateLimiter, False, n, args.seconds), False
            )
        )
        print(
            report(
                f"local, {n} processes (not shared)",
                in_processes("local", fresh(), False, n, args.seconds),
                False,
            )
        )
        print(
            f"bound: acquire() with waiting, limit {BOUND.capacity} per {BOUND.window_s:.0f} s "
            f"= {BOUND.capacity / BOUND.window_s:.0f} grants/s ({args.bound_seconds:.0f} s each)"
        )
        print(
            report(
                f"redis, {n} processes",
                in_processes("redis", fresh(), True, n, args.bound_seconds),
                True,
            )
        )
        print(
            report(
                f"local, {n} threads",
                in_threads(LocalRateLimiter, True, n, args.bound_seconds),
                True,
            )
        )
        print(
            report(
                f"local, {n} processes (not shared)",
                in_processes("local", fresh(), True, n, args.bound_seconds),
                True,
            )
        )
    finally:
        _cleanup(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
