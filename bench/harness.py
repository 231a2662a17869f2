"""Benchmark harness: a whole connector stack (temporary database, simulators, workers, CLI).

Postgres database migrated and dropped, Redis with unique queue and key names, both simulators
over HTTP, a tenants file, vault credentials, Celery worker processes, and the CLI.
"""

from __future__ import annotations

import bisect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet

from connector.runtime import Runtime
from connector.settings import Settings
from simulators.ifs.app import create_app as create_ifs_app
from simulators.ifs.settings import IfsSimSettings
from simulators.ifs.state import IfsSim
from simulators.pipedrive.app import create_app as create_pipedrive_app
from simulators.pipedrive.settings import PipedriveSimSettings
from simulators.pipedrive.state import PipedriveSim
from simulators.serving import RunningServer

BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HIGH = 1_000_000  # a limit that never binds


@contextmanager
def temporary_database() -> Iterator[str]:
    """A freshly created and migrated Postgres database, dropped afterwards."""
    import sqlalchemy as sa

    from connector.storage.migrate import upgrade

    name = f"mlc_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


class RequestClock:
    """WSGI middleware: the arrival time (monotonic) of every API request, /_sim excluded."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stamps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("PATH_INFO", "").startswith("/_sim"):
            with self._lock:
                self.stamps.append(time.monotonic())
        return self.app(environ, start_response)

    def since(self, start: float) -> list[float]:
        with self._lock:
            return [stamp for stamp in self.stamps if stamp >= start]


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


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(part) for part in text.split()]


@dataclass
class BenchStack:
    tenant: str
    env: dict[str, str]
    runtime: Runtime
    ifs: IfsSim
    pipedrive: PipedriveSim
    pipedrive_clock: RequestClock
    folder: Path
    servers: list[RunningServer]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.env["CONNECTOR_QUEUE"]

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ml-connector"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_workers(
        self, count: int = 2, concurrency: int = 2, queue: str | None = None
    ) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            number = len(self.workers)
            log = open(self.folder / f"worker{number}.log", "wb")  # noqa: SIM115 - owned by the child
            process = subprocess.Popen(
                [
                    str(BIN / "celery"),
                    "-A",
                    "workers.app:celery_app",
                    "worker",
                    "-Q",
                    queue or self.queue,
                    "-c",
                    str(concurrency),
                    "-n",
                    f"bench{number}-{self.tenant}@%h",
                    "-l",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.workers.append(process)
            started.append(process)
        return started

    def wait_for_pool(self, process: subprocess.Popen[bytes], size: int, timeout: float) -> None:
        """Wait until a prefork worker has forked its pool processes."""
        deadline = time.monotonic() + timeout
        while len(child_pids(process.pid)) < size:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + self.worker_logs())
            time.sleep(0.1)

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.workers.clear()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.folder.glob("*.log"))

    def pipedrive_writes(self) -> int:
        writes = self.pipedrive.stats()["writes"]
        return sum(
            count
            for methods in writes.values()
            for method, count in methods.items()
            if method in ("POST", "PATCH", "PUT", "DELETE")
        )

    def ifs_requests(self) -> int:
        return int(sum(self.ifs.stats()["requests"].values()))

    def close(self) -> None:
        self.stop_workers()
        self.runtime.close()
        for server in self.servers:
            server.stop()
        self.pipedrive.stop()
        _forget_redis_keys(self.env["CONNECTOR_REDIS_URL"], self.tenant, self.queue)
        shutil.rmtree(self.folder, ignore_errors=True)


def forget_queues(client: Any, *queues: str) -> None:
    """Delete Celery queues and the binding sets kombu keeps for them."""
    for queue in queues:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def _forget_redis_keys(redis_url: str, tenant: str, *queues: str) -> None:
    """Delete this stack's queues and the limiter/lock keys of its tenant (never FLUSHDB)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    forget_queues(client, *queues)
    for key in client.scan_iter(match=f"mlc:*{tenant}*", count=1000):
        client.delete(key)


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
) -> Iterator[BenchStack]:
    """One tenant wired to its own simulators; the Pipedrive plan's burst limit is `burst` on
    both sides (tenant config and simulator), so a too-generous limiter would show as 429s."""
    tenant = f"b{uuid.uuid4().hex[:10]}"
    folder = Path(tempfile.mkdtemp(prefix=f"mlc-bench-{tenant}-"))
    ifs_app = create_ifs_app(IfsSimSettings(requests_per_minute=HIGH))
    ifs_state: IfsSim = ifs_app.extensions["ifs_sim"]
    ifs_state.seed(customers=customers, orders=orders, seed=seed)
    search = search_burst if search_burst is not None else max(10, burst // 2)
    pd_settings = PipedriveSimSettings(
        api_token_burst=burst,
        oauth_burst=burst,
        search_burst=search,
        daily_budget=100_000_000,
        webhook_delay_scale=0.01,
        webhook_timeout_s=2.0,
    )
    pd_app = create_pipedrive_app(pd_settings)
    pd_state: PipedriveSim = pd_app.extensions["pipedrive_sim"]
    clock = RequestClock(pd_app.wsgi_app)
    pd_app.wsgi_app = clock  # type: ignore[method-assign]
    servers = [RunningServer(ifs_app).start(), RunningServer(pd_app).start()]
    pd_settings.api_domain = servers[1].url
    ifs_config: dict[str, Any] = {
        "base_url": servers[0].url,
        "namespace": ifs_state.settings.namespace,
        "client_id": next(iter(ifs_state.settings.clients)),
        "requests_per_minute": HIGH,
    }
    if ifs_page_size is not None:
        ifs_config["page_size"] = ifs_page_size
    config = {
        "ifs": ifs_config,
        "pipedrive": {
            "api_domain": servers[1].url,
            "burst_limit": burst,
            "search_burst_limit": search,
            "daily_budget": 100_000_000,
            "integration_user_id": pd_settings.integration_user_id,
        },
    }
    tenants_file = folder / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump({"tenants": {tenant: config}}))
    env = {
        **os.environ,
        "CONNECTOR_DATABASE_URL": database_url,
        "CONNECTOR_REDIS_URL": REDIS_URL,
        "CONNECTOR_BROKER_URL": REDIS_URL,
        "CONNECTOR_QUEUE": f"mlc-bench-{tenant}",
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CONNECTOR_TENANTS_FILE": str(tenants_file),
        "CONNECTOR_LOG_LEVEL": "WARNING",
    }
    settings = Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        broker_url=REDIS_URL,
        queue=env["CONNECTOR_QUEUE"],
        encryption_keys=env["CONNECTOR_ENCRYPTION_KEYS"],
        tenants_file=tenants_file,
    )
    runtime = Runtime(settings)
    runtime.vault.set(
        tenant, "ifs", "client_secret", next(iter(ifs_state.settings.clients.values()))
    )
    runtime.vault.set(tenant, "pipedrive", "api_token", pd_settings.api_tokens[0])
    stack = BenchStack(
        tenant=tenant,
        env=env,
        runtime=runtime,
        ifs=ifs_state,
        pipedrive=pd_state,
        pipedrive_clock=clock,
        folder=folder,
        servers=servers,
    )
    try:
        yield stack
    finally:
        stack.close()


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = action()
    return value, time.perf_counter() - started
