"""The assembled stack: simulators, a tenants file, stored credentials, a Runtime, workers.

`start_stack` builds it on the real Postgres and Redis with `celery worker` processes (tests,
benchmarks); `sandbox.embedded.embedded_stack` builds the same on SQLite with an in-process
worker (the demo). Either way every client talks real HTTP to the simulators.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from connector.runtime import Runtime
from connector.settings import Settings, is_amqp
from sandbox.simulators import Simulators
from sandbox.tenant import merge, store_credentials, tenant_config, write_tenants_file
from sandbox.workers import BIN, WorkerProcesses
from simulators.ifs.settings import IfsSimSettings
from simulators.ifs.state import IfsSim
from simulators.pipedrive.settings import PipedriveSimSettings
from simulators.pipedrive.state import PipedriveSim


@dataclass
class Stack:
    """One tenant wired to its own simulators; `env` is what its processes (CLI, workers) get."""

    tenant: str
    env: dict[str, str]
    runtime: Runtime
    simulators: Simulators
    tenants_file: Path
    tenant_config: dict[str, Any]
    workers: WorkerProcesses
    # Tenants of other stacks that this stack's processes serve too (serve_tenant_of).
    other_tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    _sender: Any = None  # the Celery app `enqueue` sends with, made on first use

    @property
    def ifs(self) -> IfsSim:
        return self.simulators.ifs

    @property
    def pipedrive(self) -> PipedriveSim:
        return self.simulators.pipedrive

    @property
    def ifs_url(self) -> str:
        return self.simulators.ifs_url

    @property
    def pipedrive_url(self) -> str:
        return self.simulators.pipedrive_url

    @property
    def queue(self) -> str:
        """The bulk queue (plans, and the records the dispatcher releases)."""
        return self.runtime.settings.queue

    @property
    def interactive_queue(self) -> str:
        """Stage pushes and replays of single records."""
        return self.runtime.settings.effective_interactive_queue

    def write_tenants(self, **overrides: Any) -> None:
        """Rewrite the tenants file with `overrides` merged into this tenant's section."""
        write_tenants_file(
            self.tenants_file,
            self.tenant,
            merge(self.tenant_config, overrides),
            self.other_tenants,
        )

    def enqueue(self, job: str, kwargs: dict[str, Any]) -> None:
        """Send a job as this stack's processes would: the app's routes choose the queue
        (interactive jobs to the interactive queue). A receiver in the test process uses it."""
        if self._sender is None:
            from workers.app import create_celery_app

            self._sender = create_celery_app(self.runtime.settings)
        self._sender.send_task(job, kwargs=kwargs)

    def serve_tenant_of(self, other: Stack, **overrides: Any) -> None:
        """Serve `other`'s tenant (on its simulators, with `overrides` merged into its section)
        from this stack's processes too: one deployment with two tenants, as production has
        many. Start the workers after it."""
        self.other_tenants[other.tenant] = merge(other.tenant_config, overrides)
        store_credentials(self.runtime.vault, other.tenant, other.simulators)
        self.write_tenants()

    def cli(
        self, *args: str, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `ml-connector ARGS` as an operator on this stack would."""
        return subprocess.run(
            [str(BIN / "ml-connector"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def start_workers(
        self,
        count: int = 2,
        concurrency: int = 2,
        queue: str | None = None,
        include: tuple[str, ...] = (),
    ) -> list[subprocess.Popen[bytes]]:
        """Worker processes consuming `queue`, by default the bulk and interactive queues."""
        return self.workers.start(count, concurrency, queue, include)

    def wait_for_pool(self, process: subprocess.Popen[bytes], size: int, timeout: float) -> None:
        self.workers.wait_for_pool(process, size, timeout)

    def stop_workers(self) -> None:
        self.workers.stop()

    def worker_logs(self, tail: int = 5000) -> str:
        return self.workers.logs_tail(tail)

    def close(self) -> None:
        """Stop the workers and simulators; forget this stack's queue and tenant keys."""
        self.stop_workers()
        if self._sender is not None:
            self._sender.close()
        from connector.storage.work_items import WorkItems

        # The session's database outlives the stack: no backlog of its tenant stays behind.
        WorkItems(self.runtime.database).forget(self.tenant)
        self.runtime.close()
        self.simulators.stop()
        if self.runtime.settings.redis_url:
            forget_redis_keys(
                self.runtime.settings.redis_url, self.tenant, self.queue, self.interactive_queue
            )
        if is_amqp(self.broker_url):
            forget_amqp_queues(self.broker_url, self.queue, self.interactive_queue)

    @property
    def broker_url(self) -> str:
        return self.runtime.settings.effective_broker_url


def forget_queues(client: Any, *queues: str) -> None:
    """Delete Celery queues and the binding sets kombu keeps for them."""
    for queue in queues:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def forget_amqp_queues(broker_url: str, *queues: str) -> None:
    """Delete these (this stack's own) queues on a RabbitMQ broker shared with others."""
    from kombu import Connection, Queue

    with Connection(broker_url, connect_timeout=5) as connection:
        for queue in queues:
            Queue(queue).bind(connection.default_channel).delete()


def forget_redis_keys(redis_url: str, tenant: str, *queues: str) -> None:
    """Delete these queues and the limiter/lock keys of `tenant` (never FLUSHDB: Redis is
    shared with whatever else runs on the machine)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    forget_queues(client, *queues)
    for key in client.scan_iter(match=f"mlc:*{tenant}*", count=1000):
        client.delete(key)


def assemble(
    settings: Settings,
    env: dict[str, str],
    tenant: str,
    simulators: Simulators,
    tenant_overrides: dict[str, Any],
    logs: Path,
) -> Stack:
    """Write the tenant's section, build the Runtime and store the credentials (the database
    must be migrated)."""
    config = tenant_config(simulators, tenant_overrides)
    write_tenants_file(settings.tenants_file, tenant, config)
    runtime = Runtime(settings)
    store_credentials(runtime.vault, tenant, simulators)
    return Stack(
        tenant=tenant,
        env=env,
        runtime=runtime,
        simulators=simulators,
        tenants_file=settings.tenants_file,
        tenant_config=config,
        workers=WorkerProcesses(env, logs, tenant),
    )


def start_stack(
    *,
    database_url: str,
    redis_url: str,
    folder: Path,
    tenant: str,
    queue: str,
    ifs: IfsSimSettings,
    pipedrive: PipedriveSimSettings,
    tenant_overrides: dict[str, Any],
    broker_url: str | None = None,
    settings_env: dict[str, str] | None = None,
) -> Stack:
    """A stack on a migrated Postgres database and Redis, for `celery worker` processes that
    consume `queue`; `folder` holds the tenants file and the worker logs. Call `close()`.

    The broker is Redis unless `broker_url` names another (RabbitMQ: amqp://…);
    `settings_env` adds CONNECTOR_* settings for every process (e.g. a short visibility
    timeout)."""
    tenants_file = folder / "tenants.yaml"
    broker_url = broker_url or redis_url
    env = {
        **os.environ,
        **(settings_env or {}),
        "CONNECTOR_DATABASE_URL": database_url,
        "CONNECTOR_REDIS_URL": redis_url,
        "CONNECTOR_BROKER_URL": broker_url,
        "CONNECTOR_QUEUE": queue,
        # Named outright: a Procfile or compose default cannot derive it from CONNECTOR_QUEUE.
        "CONNECTOR_INTERACTIVE_QUEUE": f"{queue}-interactive",
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CONNECTOR_TENANTS_FILE": str(tenants_file),
        "CONNECTOR_LOG_LEVEL": "WARNING",
    }
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        broker_url=broker_url,
        queue=queue,
        interactive_queue=env["CONNECTOR_INTERACTIVE_QUEUE"],
        encryption_keys=env["CONNECTOR_ENCRYPTION_KEYS"],
        tenants_file=tenants_file,
    )
    simulators = Simulators(ifs, pipedrive).start()
    try:
        return assemble(settings, env, tenant, simulators, tenant_overrides, folder)
    except BaseException:
        simulators.stop()
        raise
