"""The Flask application factory of the operator console: tenants, runs, failures, records,
webhook events, and replays with confirmation. Served inside the network only, never public.

Every page needs a signed-in operator (password users or a trusted proxy header), every POST
a CSRF token; each answer carries security headers. Data comes through connector.storage and
connector.diagnostics; replays go through connector.replay with the workers' queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from connector.errors import ConfigError
from connector.replay import Replay
from connector.runtime import Runtime
from connector.settings import get_settings
from connector.storage.audit import FAILED, AuditLog
from connector.tenants import TenantConfig
from console import pages
from console.auth import (
    CSRF_FIELD,
    SESSION_USER,
    Authenticator,
    csrf_token,
    require_csrf,
    session_key,
)

log = logging.getLogger("console")

Enqueue = Callable[[str, dict[str, Any]], None]
EXTENSION = "ml_connector_console"
PUBLIC_ENDPOINTS = {"console.sign_in", "console.healthz", "static"}
SECURITY_HEADERS = {
    # No scripts at all; styles only from our own static file; no framing anywhere.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REPLAY_SCOPES = ("record", "group", "tenant")


def celery_enqueue(name: str, kwargs: dict[str, Any]) -> None:
    """Send a task through the workers' Celery app (imported late: the console starts without)."""
    from workers.app import celery_app

    celery_app.send_task(name, kwargs=kwargs)


@dataclass
class ConsoleContext:
    """What the views need, kept on the app (not in module globals)."""

    runtime: Runtime
    enqueue: Enqueue
    auth: Authenticator


def create_app(
    runtime: Runtime | None = None,
    enqueue: Enqueue | None = None,
    config: dict[str, Any] | None = None,
) -> Flask:
    """Build the console; the defaults read CONNECTOR_* settings and send through Celery.
    A ConfigError when no way to authenticate is configured: the console never runs open."""
    app = Flask(__name__, root_path=str(Path(__file__).parent))
    runtime = runtime if runtime is not None else Runtime(get_settings())
    settings = runtime.settings
    auth = Authenticator.from_settings(settings.console_users, settings.console_trusted_header)
    app.config.update(
        SECRET_KEY=session_key(settings.console_secret_key, settings.key_list),
        SESSION_COOKIE_NAME="mlc_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if config:
        app.config.update(config)
    app.extensions[EXTENSION] = ConsoleContext(
        runtime=runtime,
        enqueue=enqueue if enqueue is not None else celery_enqueue,
        auth=auth,
    )
    app.register_blueprint(views)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ConfigError, _config_error)
    app.jinja_env.globals.update(csrf_field=CSRF_FIELD, csrf_token=csrf_token)
    app.jinja_env.filters["when"] = _when
    return app


def _context() -> ConsoleContext:
    context: ConsoleContext = current_app.extensions[EXTENSION]
    return context


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _http_error(error: HTTPException) -> tuple[str, int]:
    return render_template("error.html", error=error, user=_user()), error.code or 500


def _config_error(error: ConfigError) -> tuple[str, int]:
    # A broken tenants file is the operator's to fix: say what, never a traceback.
    log.warning("console: %s", error)
    return render_template("error.html", error=error, user=_user()), 503


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "—"


def _user() -> str | None:
    try:
        return _context().auth.current_user()
    except RuntimeError:
        return None


views = Blueprint("console", __name__)


@views.before_request
def _authenticate() -> Any:
    if request.method == "POST":
        require_csrf()  # also on the sign-in form: no logging someone in from another site
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if _context().auth.current_user() is None:
        # The sign-in page itself, answered 401: no redirect a script could mistake for success.
        return render_template("sign_in.html", next=request.full_path, error=None), 401
    return None


@views.get("/healthz")
def healthz() -> tuple[str, int]:
    return "ok", 200


@views.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    auth = _context().auth
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("sign_in.html", next=target, error=None)
    name = request.form.get("username", "")
    if not auth.check_password(name, request.form.get("password", "")):
        log.warning("console: refused sign-in for %r", name[:64])
        return render_template("sign_in.html", next=target, error="Wrong name or password."), 401
    session.clear()  # a new session on sign-in: no fixation of an earlier one
    session.permanent = True
    session[SESSION_USER] = name
    csrf_token()
    log.info("console: %s signed in", name)
    return redirect(target)


@views.post("/sign-out")
def sign_out() -> Any:
    session.clear()
    return redirect(url_for("console.sign_in"))


def _safe_next(target: str | None) -> str:
    # Only paths of this site: never an open redirect to another host.
    if not target or not target.startswith("/") or target.startswith("//"):
        return url_for("console.tenants")
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@views.get("/")
def index() -> Any:
    return redirect(url_for("console.tenants"))


def _tenant_filter() -> str | None:
    return request.args.get("tenant") or None


@views.get("/tenants")
def tenants() -> str:
    runtime = _context().runtime
    reading = pages.tenants_reading(runtime)
    return render_template(
        "tenants.html",
        user=_user(),
        rows=pages.tenant_rows(runtime, reading),
        problems=reading.problems,
        now=pages.utcnow(),
    )


@views.get("/runs")
def runs() -> str:
    rows = pages.run_rows(_context().runtime, _tenant_filter())
    running = any(row.progress.running for row in rows)
    return render_template(
        "runs.html", user=_user(), rows=rows, running=running, tenant=_tenant_filter()
    )


@views.get("/failures")
def failures() -> str:
    groups = pages.failure_groups(_context().runtime, _tenant_filter())
    return render_template("failures.html", user=_user(), groups=groups, tenant=_tenant_filter())


@views.get("/webhooks")
def webhooks() -> str:
    runtime, tenant = _context().runtime, _tenant_filter()
    return render_template(
        "webhooks.html",
        user=_user(),
        events=pages.recent_events(runtime, tenant),
        refusals=pages.recent_refusals(runtime, tenant),
        tenant=tenant,
    )


def _tenant(tenant_id: str) -> TenantConfig:
    tenant = pages.tenants_reading(_context().runtime).tenants.get(tenant_id)
    if tenant is None:
        abort(404, description=f"no valid tenant {tenant_id!r} in the tenants file")
    return tenant


@views.get("/records/<tenant_id>/<entity>/<path:key>")
def record(tenant_id: str, entity: str, key: str) -> str:
    if entity not in pages.ENTITIES:
        abort(404, description=f"no entity {entity!r}: customer or order")
    page = pages.record_page(_context().runtime, _tenant(tenant_id), entity, key)
    return render_template("record.html", user=_user(), story=page.story, page=page)


def _replay_rows(scope: str, values: Any) -> list[Any]:
    """The failed rows a replay of `scope` would queue (for the confirmation and the POST)."""
    runtime = _context().runtime
    tenant_id = values.get("tenant", "")
    if scope == "record":
        try:
            row = AuditLog(runtime.database).get(int(values.get("audit_id", "")))
        except ValueError:
            abort(400, description="audit_id must be a number")
        return [row] if row is not None and row.status == FAILED else []
    if scope == "group":
        return pages.rows_of_group(runtime, _tenant(tenant_id).id, values.get("group", ""))
    if scope == "tenant":
        return AuditLog(runtime.database).latest_failed(_tenant(tenant_id).id)
    abort(400, description=f"scope must be one of {', '.join(REPLAY_SCOPES)}")


@views.get("/replay")
def confirm_replay() -> str:
    scope = request.args.get("scope", "")
    rows = _replay_rows(scope, request.args)
    return render_template(
        "confirm_replay.html", user=_user(), scope=scope, rows=rows, values=request.args
    )


@views.post("/replay")
def replay() -> Any:
    context = _context()
    user = context.auth.current_user()
    scope = request.form.get("scope", "")
    rows = _replay_rows(scope, request.form)
    replays = Replay(AuditLog(context.runtime.database), context.enqueue)
    queued = [row.id for row in rows if replays.requeue(row, user)]
    log.info("console: %s replayed %s (%s)", user, queued, scope)
    return redirect(url_for("console.replays", ids=",".join(map(str, queued)) or None))


@views.get("/replays")
def replays() -> str:
    try:
        ids = [int(part) for part in request.args.get("ids", "").split(",") if part]
    except ValueError:
        abort(400, description="ids must be audit row numbers")
    outcomes = pages.replay_outcomes(_context().runtime, ids[:500])
    pending = any(outcome.state not in ("succeeded", "failed", "skipped") for outcome in outcomes)
    return render_template("replays.html", user=_user(), outcomes=outcomes, pending=pending)
