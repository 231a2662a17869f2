"""The Celery application, configured from settings in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from connector.errors import ConfigError
from connector.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_celery_app(settings: Settings | None = None) -> Celery:
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
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Beat's schedule comes from the tenants file and follows its changes while it runs.
        beat_scheduler="workers.schedule:LiveScheduler",
    )
    return app


celery_app = create_celery_app()


def enqueue(job: str, kwargs: dict[str, Any]) -> None:
    """Queue one job (a connector.jobs name) on the workers: the `Enqueue` of this app."""
    celery_app.send_task(job, kwargs=kwargs)


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    # Our JSON lines with secret redaction, instead of Celery's own logging set-up.
    from connector.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_init.connect
def _worker_start(**_: Any) -> None:
    # Every task needs the schema: refuse to start on an un-migrated database, saying why,
    # rather than failing each task with an SQL error.
    from connector.storage.database import Database
    from connector.storage.migrate import require_migrated

    database = Database(get_settings().database_url)
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


@signals.worker_process_init.connect
def _pool_process_metrics(**_: Any) -> None:
    from connector import metrics

    metrics.install_remote_observer()
