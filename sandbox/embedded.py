"""The stack in one process, as the demo runs it: SQLite, no Redis, an in-memory broker and a
thread-pool worker, the webhook receiver on a real port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from connector.settings import Settings, get_settings
from sandbox.simulators import Simulators
from sandbox.stack import Stack, assemble
from sandbox.tenant import merge
from simulators.ifs.settings import IfsSimSettings
from simulators.pipedrive.settings import PipedriveSimSettings

MEMORY_BROKER = "memory://localhost/"


def embedded_environment(folder: Path) -> Settings:
    """Point this process's settings at an emptied `folder`: its own SQLite file, no broker,
    no Redis, whatever the shell exports."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # Settings are read once per process (the Celery app too), so set them before any use.
    os.environ["CONNECTOR_DATABASE_URL"] = f"sqlite:///{folder / 'connector.db'}"
    os.environ["CONNECTOR_BROKER_URL"] = MEMORY_BROKER
    os.environ.pop("CONNECTOR_REDIS_URL", None)
    os.environ.setdefault("CONNECTOR_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    os.environ["CONNECTOR_TENANTS_FILE"] = str(folder / "tenants.yaml")
    # Worker chatter would drown what the process prints (errors still show).
    os.environ.setdefault("CONNECTOR_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()
    return get_settings()


@contextmanager
def embedded_stack(
    folder: Path,
    tenant: str,
    *,
    ifs: IfsSimSettings,
    pipedrive: PipedriveSimSettings,
    tenant_overrides: dict[str, Any],
    webhook_auth: str | None = None,
    concurrency: int = 4,
) -> Iterator[Stack]:
    """The whole stack in this process for the duration of the block. With `webhook_auth`,
    the webhook receiver runs too and the tenant's subscription URL points at it."""
    settings = embedded_environment(folder)
    from connector.storage.migrate import upgrade
    from simulators.serving import RunningServer, free_port
    from webhook_receiver.app import create_app as create_receiver
    from workers.app import celery_app
    from workers.embedded import embedded_worker
    from workers.runtime import set_runtime

    celery_app.conf.update(broker_url=MEMORY_BROKER)
    with ExitStack() as cleanup:
        simulators = Simulators(ifs, pipedrive).start()
        cleanup.callback(simulators.stop)
        upgrade(settings.database_url)
        receiver_port = free_port()
        if webhook_auth is not None:
            subscription = f"http://127.0.0.1:{receiver_port}/webhooks/pipedrive/{tenant}"
            tenant_overrides = merge(
                tenant_overrides,
                {"webhook": {"auth": webhook_auth, "subscription_url": subscription}},
            )
        stack = assemble(settings, dict(os.environ), tenant, simulators, tenant_overrides, folder)
        cleanup.callback(stack.runtime.close)
        if webhook_auth is not None:
            receiver = RunningServer(create_receiver(runtime=stack.runtime), port=receiver_port)
            cleanup.enter_context(receiver)
        # The worker's tasks use this stack's Runtime instead of building their own.
        set_runtime(stack.runtime)
        cleanup.callback(set_runtime, None)
        cleanup.enter_context(embedded_worker(concurrency=concurrency))
        yield stack
