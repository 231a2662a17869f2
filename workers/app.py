"""The Celery application, configured from settings in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu.exceptions import OperationalError

from connector import jobs
from connector.errors import ConfigError
from connector.settings import Settings, get_settings, is_amqp

log = logging.getLogger(__name__)

# Redis redelivers a message not acknowledged within this time, also one that a worker holds
# for a countdown: task countdowns stay below half of it (workers/base.py). Short, so that a
# dead worker's message comes back in about this time (tasks take seconds); RabbitMQ needs
# none: it redelivers what a consumer held as soon as its connection drops.
VISIBILITY_TIMEOUT_S = get_settings().broker_visibility_timeout_s
# How often a Redis consumer looks for messages past their visibility timeout (kombu's
# default scans every 10th tick of 10 s: up to 100 s late).
UNACKED_RESTORE_INTERVAL_S = 5


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's options for the settings' broker: Redis or RabbitMQ (amqp://)."""
    url = settings.effective_broker_url
    if is_amqp(url):
        # The broker confirms each publish, so an enqueue that returned is stored there: a
        # connection dropped under a publish raises (the receiver answers 503, a task
        # retries) instead of losing the message.
        return {"confirm_publish": True}
    if not url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {}
    return {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
        "unacked_restore_throttle": 1,
    }


def interactive_router(interactive_queue: str) -> Any:
    """A Celery router: interactive jobs (connector.jobs.is_interactive) to their own queue,
    everything else to the default (bulk) queue. An explicit `queue=` still wins."""

    def route(name: str, args: Any, kwargs: Any, options: Any, *_: Any, **__: Any) -> Any:
        if jobs.is_interactive(name, kwargs or {}):
            return {"queue": interactive_queue}
        return None

    return route


def create_celery_app(settings: Settings | None = None, *, sent_events: bool = True) -> Celery:
    """The app; `sent_events=False` for a publisher whose caller waits on each send (the
    webhook receiver): no `task-sent` event, which costs a broker round trip of its own
    per task (a Redis PUBLISH, an AMQP publish and its confirm). Flower then shows those
    tasks from the moment a worker receives them (the workers' events are unchanged)."""
    settings = settings or get_settings()
    app = Celery(
        "ml_connector",
        broker=settings.effective_broker_url,
        include=["workers.tasks"],
        task_cls="workers.base:ConnectorTask",
    )
    app.conf.update(
        # At-least-once: a task is acknowledged only after it ran, and a task whose worker
        # died is redelivered. Every task is idempotent, so a second run is harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        # Stage pushes and single replays never wait behind a backfill: their own queue,
        # consumed by workers of their own (deploy/, README: Deploy).
        task_routes=(interactive_router(settings.effective_interactive_queue),),
        mlc_interactive_queue=settings.effective_interactive_queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_transport_options(settings),
        worker_hijack_root_logger=False,
        # What Flower shows; each message costs a few event messages on the broker with them
        # (bench/README.md: measured), so a deployment without Flower may turn them off.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=sent_events and settings.task_events,
        # Beat's schedule comes from the tenants file and follows its changes while it runs.
        beat_scheduler="workers.schedule:LiveScheduler",
    )
    return app


celery_app = create_celery_app()


def enqueue(job: str, kwargs: dict[str, Any], *, app: Celery | None = None) -> None:
    """Queue one job (a connector.jobs name) on the workers: the `Enqueue` of this app (or
    of `app`, made by create_celery_app).

    Raises BrokerUnavailableError, naming the setting, when the broker cannot be reached.
    """
    from workers.publish import broker_unavailable

    try:
        (app or celery_app).send_task(job, kwargs=kwargs)
    except OperationalError as error:
        raise broker_unavailable(app or celery_app, job, error) from error


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    # Our JSON lines with secret redaction, instead of Celery's own logging set-up.
    from connector.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_init.connect
def _worker_start(**_: Any) -> None:
    # A worker beside other processes needs a shared broker and database (not the embedded
    # defaults), and every task needs the schema: refuse to start, saying why, rather than
    # consume a private queue or fail each task with an SQL error.
    from connector.storage.database import Database
    from connector.storage.migrate import require_migrated
    from workers.embedded import embedded_running

    settings = get_settings()
    try:
        if not embedded_running():
            settings.require_shared_setup("worker")
        database = Database(settings.database_url)
    except ConfigError as error:
        log.critical("%s", error)
        raise SystemExit(1) from error
    try:
        require_migrated(database)
    except ConfigError as error:
        log.critical("worker not started: %s", error)
        raise SystemExit(1) from error
    finally:
        database.dispose()

    from connector import metrics

    metrics.install_remote_observer()
    port = get_settings().worker_metrics_port
    if port is not None:
        metrics.start_worker_metrics_server(port)


@signals.worker_ready.connect
def _dispatch_start(**_: Any) -> None:
    # Every worker runs a dispatcher thread in its main process; a lease lets one at a time
    # work (workers/dispatch.py). The embedded worker starts its own with the shared runtime.
    from workers.dispatch import start_dispatcher
    from workers.embedded import embedded_running

    if not embedded_running():
        start_dispatcher()


@signals.worker_shutdown.connect
def _dispatch_stop(**_: Any) -> None:
    from workers.dispatch import stop_dispatcher

    stop_dispatcher()


@signals.worker_process_init.connect
def _pool_process_start(**_: Any) -> None:
    from connector import metrics
    from workers.runtime import get_runtime

    metrics.install_remote_observer()
    # Each pool process follows the configuration from its start, idle or not, and
    # publishes its checks (workers/runtime.py): no I/O here, the checks run in a thread.
    get_runtime()
