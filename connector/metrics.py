"""Prometheus metrics of the connector, safe for multi-process servers (gunicorn, Celery prefork).

Multi-process mode: set PROMETHEUS_MULTIPROC_DIR (or CONNECTOR_METRICS_DIR) to a directory
that exists and is EMPTY when the process tree starts, before anything imports
prometheus_client. Every process then writes its samples to files there and the exposition
(render_latest, start_worker_metrics_server) adds them up across processes. Files left by a
previous run would be counted again, hence the emptying (deploy/entrypoint.sh does it).
Without the variable, samples live in process memory (fine for one process, and for tests).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from connector.settings import Settings

# prometheus_client picks its storage (memory or mmap files) when it is first imported, so the
# connector's own setting has to be in place before that import. A fresh Settings, not the
# process-wide one: importing metrics must not freeze the settings of the process.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and (directory := Settings().metrics_dir):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

from connector import http

# deferred: a wait longer than a queued task may sleep; the next scheduled plan syncs it.
SYNC_OUTCOMES = frozenset({"created", "updated", "unchanged", "failed", "deferred"})
WEBHOOK_RESULTS = frozenset({"accepted", "rejected", "duplicate"})

RECORDS_SYNCED = Counter(
    "mlc_records_synced_total",
    "Records a sync operation handled, by outcome.",
    ["tenant", "entity", "outcome"],
)
REMOTE_REQUESTS = Counter(
    "mlc_remote_requests_total",
    "HTTP requests to IFS Cloud or Pipedrive; status 'error' = no response.",
    ["system", "method", "status"],
)
REMOTE_429 = Counter(
    "mlc_remote_429_total",
    "429 Too Many Requests answers from a remote system.",
    ["system"],
)
REMOTE_SECONDS = Histogram(
    "mlc_remote_request_seconds",
    "Duration of HTTP requests to a remote system.",
    ["system", "method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LIMITER_WAIT = Histogram(
    "mlc_limiter_wait_seconds",
    "Time spent waiting for a rate-limit token before a remote request.",
    ["system"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
WEBHOOKS = Counter(
    "mlc_webhooks_total",
    "Pipedrive webhook deliveries the receiver answered, by result.",
    ["tenant", "result"],
)
WEBHOOK_REJECTIONS = Counter(
    "mlc_webhook_rejections_total",
    "Rejected webhook deliveries, by reason.",
    ["reason"],
)
STAGE_PUSH = Histogram(
    "mlc_stage_push_seconds",
    "Time from a Pipedrive stage change to its IFS order update being done.",
    ["tenant", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600, 1800),
)
QUEUE_DEPTH = Gauge(
    "mlc_queue_depth",
    "Messages waiting in a Celery queue (Redis list length), as last measured.",
    ["queue"],
    # Whichever process measured last is right; summing the processes would not be.
    multiprocess_mode="mostrecent",
)
CONFIG_RELOAD_ERRORS = Counter(
    "mlc_config_reload_errors_total",
    "Configuration checks that found the tenants file invalid, by tenant ('' = the file).",
    ["tenant"],
)
LAST_SUCCESSFUL_SYNC = Gauge(
    "mlc_last_successful_sync_timestamp_seconds",
    "Unix time the newest completed plan of a tenant's entity finished, as last measured.",
    ["tenant", "entity"],
    multiprocess_mode="mostrecent",
)
FAILED_WAITING = Gauge(
    "mlc_failed_records_waiting",
    "Records whose newest attempt failed and that wait for a replay, as last measured.",
    ["tenant"],
    multiprocess_mode="mostrecent",
)


def multiprocess_dir() -> str | None:
    """The multi-process directory in force, or None when samples stay in memory."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# The label children of the per-record series (records synced, remote requests), resolved
# once per label set, as the webhook counters' below: a record's `labels()` calls were a few
# µs each on every record. The label sets are bounded (tenants, entities, fixed outcomes,
# systems, methods and statuses) and never removed, so a cached child is always counted.
_sync_children: dict[tuple[str, str, str], Any] = {}
_remote_children: dict[tuple[str, str, int | None], tuple[Any, Any]] = {}


def record_sync(tenant: str, entity: str, outcome: str) -> None:
    """Count one record a sync handled; outcome is created|updated|unchanged|failed|deferred."""
    child = _sync_children.get((tenant, entity, outcome))
    if child is None:
        if outcome not in SYNC_OUTCOMES:
            raise ValueError(
                f"sync outcome must be one of {sorted(SYNC_OUTCOMES)}, not {outcome!r}"
            )
        child = RECORDS_SYNCED.labels(tenant=tenant, entity=entity, outcome=outcome)
        _sync_children[(tenant, entity, outcome)] = child
    child.inc()


def observe_remote(system: str, method: str, status: int | None, seconds: float) -> None:
    """Count one HTTP attempt to `system` (ifs|pipedrive); status None = no response."""
    children = _remote_children.get((system, method, status))
    if children is None:
        status_label = "error" if status is None else str(status)
        children = (
            REMOTE_REQUESTS.labels(system=system, method=method.upper(), status=status_label),
            REMOTE_SECONDS.labels(system=system, method=method.upper()),
        )
        _remote_children[(system, method, status)] = children
    children[0].inc()
    children[1].observe(max(seconds, 0.0))
    if status == 429:
        REMOTE_429.labels(system=system).inc()


def observe_limiter_wait(system: str, seconds: float) -> None:
    """Record how long a request waited for the rate limiter of `system`."""
    LIMITER_WAIT.labels(system=system).observe(max(seconds, 0.0))


# The label children of the webhook counters, resolved once per label set: `labels()`
# validates and looks them up under a lock on every call, a few µs of each delivery. The
# label sets are bounded (configured tenants and "unknown", fixed results and reasons), and
# the children are never removed from their counters, so a cached one is always counted.
_webhook_children: dict[tuple[str, str], Any] = {}
_rejection_children: dict[str, Any] = {}


def count_webhook(tenant: str, result: str, reason: str | None = None) -> None:
    """Count one webhook delivery; result is accepted|rejected|duplicate, a rejection has a
    reason (e.g. bad_auth, bad_signature, unknown_tenant, too_large, bad_payload)."""
    child = _webhook_children.get((tenant, result))
    if child is None:
        if result not in WEBHOOK_RESULTS:
            raise ValueError(
                f"webhook result must be one of {sorted(WEBHOOK_RESULTS)}, not {result!r}"
            )
        child = _webhook_children[(tenant, result)] = WEBHOOKS.labels(tenant=tenant, result=result)
    child.inc()
    if result == "rejected":
        reason = reason or "unspecified"
        rejection = _rejection_children.get(reason)
        if rejection is None:
            rejection = _rejection_children[reason] = WEBHOOK_REJECTIONS.labels(reason=reason)
        rejection.inc()


def observe_stage_push(tenant: str, outcome: str, seconds: float) -> None:
    """Record one stage push to IFS (outcome e.g. applied, conflict, skipped, failed)."""
    STAGE_PUSH.labels(tenant=tenant, outcome=outcome).observe(max(seconds, 0.0))


def set_queue_depth(queue: str, depth: int) -> None:
    """Record the messages waiting in `queue` (connector.diagnostics.queues measures them)."""
    QUEUE_DEPTH.labels(queue=queue).set(depth)


def count_config_reload_error(tenant: str | None) -> None:
    """Count one check that found `tenant`'s section (None: the file as a whole) invalid."""
    CONFIG_RELOAD_ERRORS.labels(tenant=tenant or "").inc()


def set_last_successful_sync(tenant: str, entity: str, unix_s: float) -> None:
    """Record when the newest completed plan of `tenant`'s `entity` finished."""
    LAST_SUCCESSFUL_SYNC.labels(tenant=tenant, entity=entity).set(unix_s)


def set_failed_waiting(tenant: str, count: int) -> None:
    """Record how many of `tenant`'s records wait for a replay."""
    FAILED_WAITING.labels(tenant=tenant).set(count)


def _exposition_registry() -> CollectorRegistry:
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    # A fresh registry per scrape: the collector reads the files of every process.
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def render_latest() -> tuple[bytes, str]:
    """The exposition body (all processes in multi-process mode) and its content type."""
    return generate_latest(_exposition_registry()), CONTENT_TYPE_LATEST


_observer_lock = threading.Lock()
_observer_installed = False


def install_remote_observer() -> bool:
    """Have connector.http report every request to observe_remote; True once installed.

    Call it at process start (workers, receiver); calling it again does nothing.
    """
    global _observer_installed
    with _observer_lock:
        if not _observer_installed:
            http.add_observer(observe_remote)
            _observer_installed = True
        return True


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, Any]:
    """Serve /metrics on `port` from a background thread (for Celery workers, which have no
    web server of their own). Start it in the worker's main process: in multi-process mode it
    reports the pool children too. Port 0 picks a free port (server.server_port).
    """
    install_remote_observer()
    server, thread = start_http_server(port, addr=addr, registry=_MultiProcessAware())
    return server, thread


class _MultiProcessAware(CollectorRegistry):
    """A registry that re-reads the process files on every scrape, or the memory registry."""

    def collect(self) -> Iterator[Any]:
        yield from _exposition_registry().collect()
