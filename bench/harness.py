"""Benchmark harness: the sandbox stack (`sandbox.stack`) sized and measured for benchmarks.

A migrated temporary database, the simulators seeded with N customers and M orders, the
Pipedrive plan's burst limit on both sides, Celery worker processes, and the figures the
benchmarks read (request arrival times, writes, process memory).
"""

from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.database import empty_database
from sandbox.simulators import fast_pipedrive_settings
from sandbox.stack import Stack, start_stack
from simulators.ifs.settings import IfsSimSettings

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
HIGH = 1_000_000  # a limit that never binds


def benchmark_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line of `python -m <module>`, its docstring as the help text."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


@contextmanager
def bench_database() -> Iterator[str]:
    """A freshly created and migrated Postgres database, dropped afterwards."""
    from connector.storage.migrate import upgrade

    with empty_database(POSTGRES_ADMIN_URL, prefix="mlc_bench") as url:
        upgrade(url)
        yield url


class RequestClock:
    """WSGI middleware: the arrival time (monotonic) of every API request, /_sim excluded."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stamps: list[float] = []
        self.methods: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/_sim"):
            with self._lock:
                self.stamps.append(time.monotonic())
                self.methods.append(str(environ.get("REQUEST_METHOD", "")))
        return self.app(environ, start_response)

    def since(self, start: float) -> list[float]:
        with self._lock:
            return [stamp for stamp in self.stamps if stamp >= start]

    def writes_since(self, start: float) -> list[float]:
        """Arrival times of the POST, PATCH, PUT and DELETE requests since `start`."""
        with self._lock:
            return [
                stamp
                for stamp, method in zip(self.stamps, self.methods, strict=True)
                if stamp >= start and method in ("POST", "PATCH", "PUT", "DELETE")
            ]


def peak_in_window(stamps: Iterable[float], window_s: float) -> int:
    """Most requests that arrived within any rolling window of `window_s` (as Pipedrive counts:
    a request counts while it is younger than the window)."""
    ordered = sorted(stamps)
    peak = 0
    for end, stamp in enumerate(ordered):
        first = bisect.bisect_right(ordered, stamp - window_s, 0, end)
        peak = max(peak, end - first + 1)
    return peak


def vm_kib(pid: int, field_name: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS = resident now, VmHWM = peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


@dataclass
class BenchStack:
    """A sandbox stack and the clock at its Pipedrive simulator's WSGI entry."""

    stack: Stack
    pipedrive_clock: RequestClock

    def pipedrive_writes(self) -> int:
        writes = self.stack.pipedrive.stats()["writes"]
        return sum(
            count
            for methods in writes.values()
            for method, count in methods.items()
            if method in ("POST", "PATCH", "PUT", "DELETE")
        )

    def ifs_requests(self) -> int:
        return int(sum(self.stack.ifs.stats()["requests"].values()))


@contextmanager
def bench_stack(
    database_url: str,
    *,
    customers: int,
    orders: int,
    burst: int = 1000,
    search_burst: int | None = None,
    seed: int = 11,
    ifs_page_size: int | None = None,
    broker_url: str | None = None,
    settings_env: dict[str, str] | None = None,
) -> Iterator[BenchStack]:
    """One tenant wired to its own simulators; the Pipedrive plan's burst limit is `burst` on
    both sides (tenant config and simulator), so a too-generous limiter would show as 429s.
    The broker is Redis unless `broker_url` names another; `settings_env` adds CONNECTOR_*
    settings for the stack's processes."""
    tenant = f"b{uuid.uuid4().hex[:10]}"
    search = search_burst if search_burst is not None else max(10, burst // 2)
    pipedrive = fast_pipedrive_settings()
    pipedrive.api_token_burst = pipedrive.oauth_burst = burst
    pipedrive.search_burst = search
    ifs_config: dict[str, Any] = {"requests_per_minute": HIGH}
    if ifs_page_size is not None:
        ifs_config["page_size"] = ifs_page_size
    with tempfile.TemporaryDirectory(prefix=f"mlc-bench-{tenant}-") as folder:
        stack = start_stack(
            database_url=database_url,
            redis_url=REDIS_URL,
            folder=Path(folder),
            tenant=tenant,
            queue=f"mlc-bench-{tenant}",
            ifs=IfsSimSettings(requests_per_minute=HIGH),
            pipedrive=pipedrive,
            broker_url=broker_url,
            settings_env=settings_env,
            tenant_overrides={
                "ifs": ifs_config,
                "pipedrive": {
                    "burst_limit": burst,
                    "search_burst_limit": search,
                    "daily_budget": pipedrive.daily_budget,
                },
            },
        )
        try:
            stack.ifs.seed(customers=customers, orders=orders, seed=seed)
            app = stack.simulators.pipedrive_app
            clock = RequestClock(app.wsgi_app)
            app.wsgi_app = clock  # type: ignore[method-assign]
            yield BenchStack(stack, clock)
        finally:
            stack.close()
