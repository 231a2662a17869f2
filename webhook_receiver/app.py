"""The Flask application factory of the webhook receiver: webhook, health and metrics routes.

A delivery is authenticated (an unknown tenant through the same checks, against stand-in
secrets), size-checked, parsed and shape-checked (connector.webhooks.shape: 400 for what
could not be stored or used), persisted in one transaction (the unique (tenant, event_id)
key drops duplicates), committed, and only then enqueued; the answer comes fast. Anything
that would lose an accepted event (database or broker down) answers 503 so Pipedrive
retries. Refusals are kept (connector.storage.webhook_refusals) for the console.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from connector import metrics
from connector.diagnostics.freshness import measure_sync_metrics
from connector.diagnostics.queues import queue_status
from connector.errors import ConfigError, VaultError
from connector.jobs import PUSH_STAGE, Enqueue
from connector.live_config import config_checks
from connector.runtime import Runtime
from connector.settings import Settings, get_settings
from connector.storage.migrate import require_migrated
from connector.storage.webhook_events import StoredEvent, WebhookEvents, WebhookEventStatus
from connector.storage.webhook_refusals import Refusal, WebhookRefusals
from connector.tenants import TenantConfig, WebhookConfig
from connector.webhooks.auth import verify_basic, verify_hmac
from connector.webhooks.credentials import WebhookCredentialCache, WebhookSecrets
from connector.webhooks.events import PayloadError, WebhookEventData, parse_body

log = logging.getLogger("webhook_receiver")

CheckBroker = Callable[[], None]  # returns when the broker answers, raises when it does not

EXTENSION = "ml_connector_receiver"
UNAUTHORIZED_BODY = {"error": "unauthorized"}  # one body for every 401: no hint what failed
READ_CHUNK = 64 * 1024
# What an unknown tenant is checked with: the defaults, as most tenants have them.
UNKNOWN_TENANT_WEBHOOK = WebhookConfig()


def celery_enqueue(settings: Settings) -> Enqueue:
    """The workers' jobs through a Celery app of the receiver's own: it sends no task-sent
    event (one broker round trip per delivery, not two, while Pipedrive waits), over one
    connection held by the process (workers.publish: no retry over time, the stored event
    and the sweeper cover a failed send). Celery is imported and the app made here, at
    start-up, not in the first delivery (about 0.3 s of CPU); the connection opens at the
    first send, so a receiver starts while the broker is down."""
    from workers.app import create_celery_app
    from workers.publish import HeldPublisher

    return HeldPublisher(create_celery_app(settings, sent_events=False))


def celery_broker_check() -> None:
    """Connect to the Celery broker once; raises when it cannot be reached."""
    from workers.app import celery_app

    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)


@dataclass
class ReceiverContext:
    """What the views need, kept on the app (not in module globals)."""

    runtime: Runtime
    enqueue: Enqueue
    check_broker: CheckBroker
    credentials: WebhookCredentialCache
    refusals: WebhookRefusals


class Rejection(Exception):
    """A delivery refused before anything was stored."""

    def __init__(self, status: int, reason: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = body or {"error": reason}


def create_app(
    runtime: Runtime | None = None,
    enqueue: Enqueue | None = None,
    config: dict[str, Any] | None = None,
    *,
    check_broker: CheckBroker | None = None,
) -> Flask:
    """Build the receiver; the defaults read CONNECTOR_* settings and send through Celery."""
    # An explicit root path: editable installs give the package no file location.
    app = Flask(__name__, root_path=str(Path(__file__).parent))
    # Built from the environment, this is a deployed receiver: /readyz then also checks that
    # the settings can serve several processes (no memory:// broker, no implicit SQLite).
    app.config["CHECK_SHARED_SETUP"] = runtime is None
    if runtime is None:
        # The receiver's own runtime follows the tenants file and the vault (no restart)
        # and publishes its checks for `status` (watch_configuration: also when idle).
        runtime = Runtime(get_settings())
        runtime.go_live(role="receiver")
    app.config["MAX_CONTENT_LENGTH"] = _largest_body_limit(runtime)
    if config:
        app.config.update(config)
    app.extensions[EXTENSION] = ReceiverContext(
        runtime=runtime,
        enqueue=enqueue if enqueue is not None else celery_enqueue(runtime.settings),
        check_broker=check_broker if check_broker is not None else celery_broker_check,
        credentials=WebhookCredentialCache(runtime.vault, version_of=_credential_version(runtime)),
        refusals=WebhookRefusals(runtime.database),
    )
    app.register_blueprint(webhooks)
    app.register_blueprint(health)
    app.before_request(_follow_configuration)
    return app


def watch_configuration(app: Flask) -> None:
    """Check the configuration on a timer too, from a thread of this process, so that a
    receiver that gets no request still follows the file and reports it (a deployed one)."""
    live = app.extensions[EXTENSION].runtime.live
    if live is not None:
        live.watch()


def _credential_version(runtime: Runtime) -> Callable[[str], str | None]:
    """A tenant's credential version stamp as the live configuration last read it."""

    def version_of(tenant_id: str) -> str | None:
        live = runtime.live
        return live.credential_version(tenant_id) if live is not None else None

    return version_of


def _follow_configuration() -> None:
    """Pick up a changed tenants file or credential before the request (cheap: a check at
    most every few seconds); a change may raise the process-wide body limit."""
    runtime = _context().runtime
    if runtime.refresh_if_stale():
        current_app.config["MAX_CONTENT_LENGTH"] = _largest_body_limit(runtime)


def _largest_body_limit(runtime: Runtime) -> int:
    # A process-wide cap in front of the per-tenant one, so no request is read unbounded.
    try:
        limits = [tenant.webhook.max_body_bytes for tenant in runtime.tenants.values()]
    except ConfigError as error:
        log.error("tenants file unreadable at start-up: %s", error)
        limits = []
    return max(limits, default=WebhookConfig().max_body_bytes)


def _context() -> ReceiverContext:
    context: ReceiverContext = current_app.extensions[EXTENSION]
    return context


def _answer(body: dict[str, Any], status: int) -> tuple[Response, int]:
    """A delivery's JSON answer, built directly: flask.jsonify goes through the app's JSON
    provider (its settings and the response class look-up) on every delivery. The bytes are
    what jsonify sends (compact, keys sorted, a final newline)."""
    text = json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n"
    return Response(text, status=status, mimetype="application/json"), status


def _count(tenant: str, result: str, reason: str | None = None) -> None:
    try:
        metrics.count_webhook(tenant, result, reason)
    except Exception:  # a broken counter must never fail a delivery
        log.exception("could not count webhook %s/%s", result, reason)


# -- webhooks -----------------------------------------------------------------------------

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhooks/pipedrive/<tenant_id>")
def receive_pipedrive(tenant_id: str) -> tuple[Response, int]:
    context = _context()
    try:
        tenant: TenantConfig | None = context.runtime.tenant(tenant_id, recheck_unknown=True)
    except ConfigError:
        tenant = None
    # Attacker-chosen names never become metric labels nor stored refusals.
    label = tenant.id if tenant is not None else "unknown"
    try:
        body = _authenticated_body(context, tenant)
        payload, event = _parse(body)
    except Rejection as rejection:
        log.warning(
            "webhook rejected: tenant=%s reason=%s status=%s remote=%s",
            label,
            rejection.reason,
            rejection.status,
            request.remote_addr,
        )
        _count(label, "rejected", rejection.reason)
        _keep_refusal(context, tenant.id if tenant is not None else None, rejection)
        return _answer(rejection.body, rejection.status)
    assert tenant is not None, "only a known tenant's delivery is authenticated"
    return _accept(context, tenant, payload, event)


def _authenticated_body(context: ReceiverContext, tenant: TenantConfig | None) -> bytes:
    """The raw body once size and credentials check out; Rejection otherwise.

    An unknown tenant goes through the very same checks, against random secrets and the
    default webhook settings, so that refusing it costs what refusing a wrong password of a
    known tenant costs: the time of an answer does not tell which tenant ids exist.
    """
    settings = tenant.webhook if tenant is not None else UNKNOWN_TENANT_WEBHOOK
    dummy = context.credentials.dummy
    stored = _secrets(context, tenant) if tenant is not None else dummy
    refused = "unknown_tenant" if tenant is None else None
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Rejection(413, "too_large")
    if settings.auth in ("basic", "both"):
        user, password = stored.basic_user, stored.basic_password
        if tenant is not None and (user is None or password is None):
            log.error("tenant %s: webhook credential missing: basic_user/basic_password", tenant.id)
        # Basic needs no body: a wrong password is refused before anything is read.
        if not verify_basic(
            request.headers.get("Authorization"),
            user if user is not None else dummy.basic_user or "",
            password if password is not None else dummy.basic_password or "",
        ) or (user is None or password is None):
            raise Rejection(401, refused or "bad_auth", UNAUTHORIZED_BODY)
    body = _read_body(limit)
    if settings.auth in ("hmac", "both"):
        secret = stored.hmac_secret
        if tenant is not None and secret is None:
            log.error("tenant %s: webhook credential missing: hmac_secret", tenant.id)
        signature = request.headers.get(settings.hmac_header)
        if not verify_hmac(signature, body, secret or dummy.hmac_secret or "") or secret is None:
            raise Rejection(401, refused or "bad_signature", UNAUTHORIZED_BODY)
    if refused:
        raise Rejection(401, refused, UNAUTHORIZED_BODY)
    return body


def _secrets(context: ReceiverContext, tenant: TenantConfig) -> WebhookSecrets:
    try:
        return context.credentials.get(tenant.id)
    except VaultError as error:
        # The vault's messages name the row and the setting, never key material: e.g. keys
        # rotated by `keys rotate` that this process's CONNECTOR_ENCRYPTION_KEYS lacks.
        # No "credentials: " before the cause: the log redaction would take its first word
        # for a secret value.
        log.error("tenant %s: webhook credentials unreadable (answering 503): %s", tenant.id, error)
        raise Rejection(503, "unavailable", {"error": "unavailable"}) from None
    except SQLAlchemyError as error:
        log.error(
            "tenant %s: webhook credentials unreadable (answering 503): %s",
            tenant.id,
            type(error).__name__,
        )
        raise Rejection(503, "unavailable", {"error": "unavailable"}) from None


def _keep_refusal(context: ReceiverContext, tenant_id: str | None, rejection: Rejection) -> None:
    """Store a refusal for the console; an outage answers 503 and is only counted."""
    if rejection.status >= 500:
        return
    try:
        context.refusals.record(
            Refusal(tenant_id, rejection.reason, rejection.status, request.remote_addr)
        )
    except Exception as error:  # keeping it must never change the answer
        log.warning("webhook refusal not stored: %s", type(error).__name__)


def _read_body(limit: int) -> bytes:
    """Read at most `limit` bytes (chunked bodies have no Content-Length to check up front)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = request.stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise Rejection(413, "too_large")
    except RequestEntityTooLarge:
        raise Rejection(413, "too_large") from None
    return b"".join(chunks)


def _parse(body: bytes) -> tuple[dict[str, Any], WebhookEventData]:
    try:
        return parse_body(body)
    except PayloadError as error:
        raise Rejection(400, "bad_payload", {"error": str(error)}) from None


def _accept(
    context: ReceiverContext,
    tenant: TenantConfig,
    payload: dict[str, Any],
    event: WebhookEventData,
) -> tuple[Response, int]:
    """Persist and commit (one transaction), then enqueue; a duplicate is enqueued only if
    it never was.

    A new event to handle is stored as enqueued, so that the one commit is all a delivery
    costs; a failed enqueue moves it back to received (Pipedrive's retry of the 503 then
    enqueues it). A crash between the commit and the enqueue leaves it enqueued and not
    finished, which the sweeper of unfinished events picks up.
    """
    events = WebhookEvents(context.runtime.database)
    try:
        stored = _persist(events, tenant.id, payload, event)
    except SQLAlchemyError as error:
        log.error("tenant %s: cannot store webhook event: %s", tenant.id, type(error).__name__)
        _count(tenant.id, "rejected", "unavailable")
        return _answer({"error": "unavailable"}, 503)
    if stored.status == WebhookEventStatus.IGNORED:
        _count(tenant.id, "accepted" if stored.created else "duplicate")
        return _answer({"status": "ignored" if stored.created else "duplicate"}, 200)
    retry = not stored.created and stored.status == WebhookEventStatus.RECEIVED
    if not stored.created and not retry:
        _count(tenant.id, "duplicate")
        return _answer({"status": "duplicate"}, 200)
    try:
        context.enqueue(PUSH_STAGE, {"tenant": tenant.id, "webhook_event_id": stored.id})
    except Exception as error:
        log.error(
            "tenant %s: cannot enqueue webhook event %s: %s",
            tenant.id,
            stored.id,
            type(error).__name__,
        )
        if stored.created:
            _set_status(events, stored.id, WebhookEventStatus.RECEIVED)
        _count(tenant.id, "rejected", "unavailable")
        return _answer({"error": "unavailable"}, 503)
    if retry:
        _set_status(events, stored.id, WebhookEventStatus.ENQUEUED)
    _count(tenant.id, "accepted" if stored.created else "duplicate")
    return _answer({"status": "accepted", "event_id": event.event_id}, 200)


def _persist(
    events: WebhookEvents, tenant_id: str, payload: dict[str, Any], event: WebhookEventData
) -> StoredEvent:
    """The event's row, committed; deal events and deletes (merges too) of organizations are
    handled, the others kept as ignored."""
    if event.is_deal or (event.entity == "organization" and event.action == "delete"):
        return events.add(tenant_id, event, payload, status=WebhookEventStatus.ENQUEUED)
    return events.add(
        tenant_id,
        event,
        payload,
        status=WebhookEventStatus.IGNORED,
        detail=f"{event.entity} events are not synchronised",
    )


def _set_status(events: WebhookEvents, row_id: int, status: WebhookEventStatus) -> None:
    """Received ↔ enqueued after the enqueue's outcome; only from the other of the two, as a
    worker may have finished the event already."""
    try:
        if status == WebhookEventStatus.ENQUEUED:
            events.mark_enqueued(row_id)
        else:
            events.mark_received(row_id)
    except SQLAlchemyError as error:
        # Either way the sweeper of unfinished events gets to it; a duplicate task is harmless.
        log.warning("webhook event %s not marked %s: %s", row_id, status, type(error).__name__)


# -- health and metrics -------------------------------------------------------------------

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Liveness: the process answers (no I/O)."""
    return jsonify({"status": "ok"}), 200


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and is migrated, and the broker answers a connection."""
    context = _context()
    checks: dict[str, str] = {}
    if current_app.config.get("CHECK_SHARED_SETUP"):
        problems = context.runtime.settings.shared_setup_problems()
        checks["settings"] = "; ".join(problems) if problems else "ok"
    try:
        require_migrated(context.runtime.database)
        checks["database"] = "ok"
    except ConfigError as error:
        log.warning("readiness: %s", error)
        checks["database"] = "not migrated" if "not migrated" in str(error) else "unavailable"
    except Exception as error:
        log.warning("readiness: database unavailable: %s", type(error).__name__)
        checks["database"] = "unavailable"
    try:
        context.check_broker()
        checks["broker"] = "ok"
    except Exception as error:
        log.warning("readiness: broker unavailable: %s", type(error).__name__)
        checks["broker"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    detail: dict[str, Any] = {"status": "ready" if ready else "not ready", **checks}
    # A broken tenants file does not make the receiver unready: it still serves every valid
    # tenant (and the last good configuration of a broken one); unready would stop them all.
    # Every role's last check counts: a file only the workers or beat see broken (another
    # host's copy, a cron only Celery refuses) shows here too, naming who saw it.
    live = context.runtime.live
    if live is not None:
        own = live.messages()
        others = [check for check in config_checks(context.runtime) if check.problems]
        detail["tenants_file"] = "invalid" if own or others else "ok"
        if own:
            detail["tenants_file_problems"] = own
        if others:
            detail["tenants_file_reports"] = [
                {
                    "role": check.role,
                    "host": check.host,
                    "pid": check.pid,
                    "digest": check.digest,
                    "problems": check.messages(),
                }
                for check in others
            ]
    return jsonify(detail), 200 if ready else 503


@health.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus exposition of this process (all processes in multi-process mode)."""
    _measure_queue_depth()
    _measure_sync_freshness()
    body, content_type = metrics.render_latest()
    return Response(body, status=200, headers={"Content-Type": content_type})


def _measure_queue_depth() -> None:
    """Refresh mlc_queue_depth from the broker (scrapes are infrequent)."""
    settings = _context().runtime.settings
    try:
        queues = [settings.queue, settings.effective_interactive_queue]
        measured = queue_status(settings.effective_broker_url, queues, timeout_s=1.0)
    except Exception as error:  # a misconfigured broker must not break the scrape either
        log.warning("queue depth not measured: %s", error)
        return
    if measured.error:
        log.warning("queue depth not measured: %s", measured.error)


def _measure_sync_freshness() -> None:
    """Refresh the last-successful-sync and failed-waiting gauges from the database."""
    runtime = _context().runtime
    try:
        measure_sync_metrics(runtime, list(runtime.tenants))
    except Exception as error:  # a database outage must not break the scrape
        log.warning("sync freshness not measured: %s", type(error).__name__)


@webhooks.app_errorhandler(RequestEntityTooLarge)
def too_large(_error: RequestEntityTooLarge) -> tuple[Response, int]:
    """The process-wide MAX_CONTENT_LENGTH tripped before a view read the body."""
    _count("unknown", "rejected", "too_large")
    return _answer({"error": "too_large"}, 413)
