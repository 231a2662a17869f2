"""A worker inside the current process, for the embedded setup (no broker, no Redis).

`ml-connector demo` and `ml-connector sync` without CONNECTOR_BROKER_URL use it: the
Celery app runs on its in-memory transport and this worker's threads consume it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery.contrib.testing.worker import start_worker

from workers.app import celery_app

_running = False  # an embedded worker runs in this process (its worker_init skips checks)


def is_embedded() -> bool:
    return str(celery_app.conf.broker_url).startswith("memory://")


def embedded_running() -> bool:
    return _running


@contextmanager
def embedded_worker(concurrency: int = 4) -> Iterator[None]:
    """Run a thread-pool worker on the app's in-memory broker for the duration of the block."""
    # The in-memory transport polls; its default pause (1 s) would dominate every run.
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        "polling_interval": 0.01,
    }
    global _running
    _running = True
    from workers.dispatch import start_dispatcher, stop_dispatcher
    from workers.runtime import get_runtime

    queues = [celery_app.conf.task_default_queue, celery_app.conf.mlc_interactive_queue]
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        queues=queues,
        loglevel="WARNING",
        shutdown_timeout=30.0,
    ):
        # The plans' records reach the queue through the dispatcher, which shares the
        # embedded runtime (its in-process limiter is the one the worker threads take from).
        start_dispatcher(get_runtime())
        try:
            yield
        finally:
            stop_dispatcher()
            _running = False
