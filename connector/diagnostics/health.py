"""A tenant's health: `ml-connector check` (live read-only probes) and `status` (stored facts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError
from sqlalchemy import func, select

from connector.errors import ConnectorError, MissingCredentialError, RemoteError, VaultError
from connector.http import RetryPolicy
from connector.ratelimit import Limit, RateLimited, RedisRateLimiter
from connector.storage.audit import AuditLog
from connector.storage.models import AuditRecord, SyncWatermark, WebhookEvent
from connector.storage.runs import run_summary
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.vault import required_credentials

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.ifs.client import IfsClient
    from connector.pipedrive.client import PipedriveClient
    from connector.runtime import Runtime
    from connector.settings import Settings
    from connector.tenants import TenantConfig

IFS = "ifs"
PIPEDRIVE = "pipedrive"
SYSTEM_NAMES = {IFS: "IFS", PIPEDRIVE: "Pipedrive"}
# An operator waits for `check`: one quick retry, never the workers' two-minute patience.
CHECK_POLICY = RetryPolicy(max_tries=2, base_s=0.2, cap_s=1.0, max_time_s=5.0)
CHECK_TIMEOUT_S = 10.0
PIPEDRIVE_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-daily-requests-left",
)
WEBHOOK_STATE_KEY = "webhook"  # connector.webhooks.registration.STATE_KEY
FAILED_EVENT = "failed"  # connector.stage_push.push.FAILED
RECONCILE_ACTION = "reconcile"  # events made by reconciliation, not delivered by Pipedrive


def public_url(url: str) -> str:
    """`url` without user info, query or fragment: fit to print (no secrets)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- our own limiter ---------------------------------------------------------------------------
@dataclass
class LimitUsage:
    """How much of one of our limiter's rolling windows is spent right now."""

    name: str
    capacity: int
    window_s: float
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.capacity - self.used)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"remaining": self.remaining}

    def describe(self) -> str:
        return (
            f"{self.name} {self.remaining}/{self.capacity} left "
            f"(per {self.window_s:g} s, {self.used} used)"
        )


def limit_usage(coordination: Coordination, key: str, limit: Limit, name: str) -> LimitUsage | None:
    """Spent cost of `limit` under `key` in the shared Redis limiter, read without booking
    anything; None for the in-process limiter (a fresh CLI process knows nothing of workers).

    Mirrors sliding_window.lua: a bucket counts while its end is within the window of now,
    on Redis' clock.
    """
    limiter = coordination.limiter
    if not isinstance(limiter, RedisRateLimiter):
        return None
    zkey, hkey = limiter.keys_for(key, limit)
    client = limiter.client
    seconds, micros = client.time()
    now_us = int(seconds) * 1_000_000 + int(micros)
    window_us = round(limit.window_s * 1_000_000)
    members = client.zrangebyscore(zkey, f"({now_us - window_us}", "+inf")
    live = [member for member in members if isinstance(member, bytes | str)]
    costs = client.hmget(hkey, live) if live else []
    used = sum(int(cost) for cost in costs if isinstance(cost, bytes | str))
    return LimitUsage(name, limit.capacity, limit.window_s, used)


def ifs_budget(runtime: Runtime, tenant: TenantConfig) -> list[LimitUsage]:
    """Our limiter's IFS budget of the tenant (requests a minute)."""
    from connector.ifs.client import ifs_limits

    found = (
        limit_usage(runtime.coordination, f"ifs:{tenant.id}", limit, "requests")
        for limit in ifs_limits(tenant.ifs)
    )
    return [usage for usage in found if usage is not None]


def pipedrive_budget(runtime: Runtime, tenant: TenantConfig) -> list[LimitUsage]:
    """Our limiter's Pipedrive counters of the tenant: burst, search burst, daily tokens."""
    from connector.pipedrive.client import (
        SEARCH_BUCKET,
        burst_limits,
        daily_limit,
        rate_limit_key,
    )

    key = rate_limit_key(tenant.id)
    limits = [*burst_limits(tenant.pipedrive, SEARCH_BUCKET), daily_limit(tenant.pipedrive)]
    found = (
        limit_usage(runtime.coordination, key, limit, limit.name or "requests") for limit in limits
    )
    return [usage for usage in found if usage is not None]


def _budget(reader: Callable[[], list[LimitUsage]]) -> dict[str, Any]:
    """Headroom of our limiter as JSON, or why it cannot be shown."""
    try:
        usages = reader()
    except RedisError as error:
        return {"error": f"Redis (CONNECTOR_REDIS_URL) unreachable: {error}"}
    if not usages:
        return {"note": "in-process limiter (CONNECTOR_REDIS_URL unset): nothing shared to show"}
    return {"limits": [usage.as_dict() for usage in usages]}


# -- check ------------------------------------------------------------------------------------
@dataclass
class Step:
    """One read `check` made: what, where (no secrets), and what came back."""

    name: str
    url: str
    ok: bool = False
    detail: str | None = None


@dataclass
class SystemCheck:
    """The outcome of probing one remote system for one tenant."""

    system: str
    steps: list[Step] = field(default_factory=list)
    error: str | None = None
    tried: str | None = None
    fix: str | None = None
    headroom: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return SYSTEM_NAMES.get(self.system, self.system)

    def fail(self, tried: str, error: str, fix: str) -> None:
        self.tried, self.error, self.fix = tried, error, fix

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "ok": self.ok,
            "steps": [asdict(step) for step in self.steps],
            "error": self.error,
            "tried": self.tried,
            "fix": self.fix,
            "headroom": self.headroom,
        }


@dataclass
class CheckReport:
    tenant: str
    systems: list[SystemCheck]

    @property
    def ok(self) -> bool:
        return all(system.ok for system in self.systems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "systems": [system.as_dict() for system in self.systems],
        }


def _credentials_fix(error: MissingCredentialError) -> str:
    return f"`ml-connector credentials set {error.tenant} {error.system} {error.name}`"


def _vault_fix(tenant_id: str, system: str) -> str:
    return (
        "check CONNECTOR_ENCRYPTION_KEYS (the key that encrypted the secret must still be "
        f"listed), or store the secret again with `ml-connector credentials set {tenant_id} "
        f"{system} …`"
    )


def _run_steps(
    result: SystemCheck,
    steps: Sequence[tuple[str, str, Callable[[], str | None]]],
    fix_for: Callable[[str, RemoteError], str],
    tenant_id: str,
) -> None:
    """Run (name, url, read) steps in order; the first failure is recorded with its fix."""
    for name, url, read in steps:
        step = Step(name, public_url(url))
        result.steps.append(step)
        tried = f"{name}: {step.url}"
        try:
            step.detail = read()
        except MissingCredentialError as error:
            result.fail(tried, str(error), _credentials_fix(error))
        except VaultError as error:
            result.fail(tried, str(error), _vault_fix(tenant_id, result.system))
        except RateLimited as error:
            result.fail(
                tried,
                str(error),
                "our own rate limiter has no budget left right now (workers are busy): "
                "try again shortly",
            )
        except RemoteError as error:
            result.fail(tried, str(error), fix_for(name, error))
        except RedisError as error:
            result.fail(
                tried,
                f"Redis: {error}",
                "is CONNECTOR_REDIS_URL right and Redis running? (the rate limiter needs it)",
            )
        except ConnectorError as error:
            result.fail(tried, str(error), "see the error; then run the check again")
        else:
            step.ok = True
            continue
        step.detail = result.error
        return


def _ifs_fix(tenant: TenantConfig, tenants_file: str) -> Callable[[str, RemoteError], str]:
    config = tenant.ifs

    def fix(step: str, error: RemoteError) -> str:
        if error.status is None:
            if step == "token" and config.token_url:
                where, url = "ifs.token_url", config.token_url
            else:
                where, url = "ifs.base_url", config.base_url
            return f"is {where} ({public_url(url)}) right and reachable from here?"
        if step == "token":
            if error.status in (400, 401, 403):
                return (
                    f"check ifs.client_id ({config.client_id!r}) in the tenants file "
                    f"({tenants_file}) and store the client secret with "
                    f"`ml-connector credentials set {tenant.id} ifs client_secret`"
                )
            if error.status == 404:
                return (
                    f"no token endpoint there: check ifs.namespace ({config.namespace!r}) "
                    "or set ifs.token_url in the tenants file"
                )
        elif error.status in (401, 403):
            return (
                f"IFS issued a token but refused the read: grant the IAM client "
                f"{config.client_id!r} access to the {step} projection in IFS"
            )
        elif error.status == 404:
            prefix = "customer" if step == "customers" else "order"
            return (
                f"check ifs.{prefix}_projection and ifs.{prefix}_entity_set in the tenants "
                f"file ({tenants_file}): IFS does not know this entity set"
            )
        if error.retryable:
            return "IFS is overloaded or down (it answered with a retryable error): try later"
        return "see IFS's error above"

    return fix


def _pipedrive_fix(tenant: TenantConfig, tenants_file: str) -> Callable[[str, RemoteError], str]:
    config = tenant.pipedrive

    def fix(step: str, error: RemoteError) -> str:
        if error.status is None:
            return (
                f"is pipedrive.api_domain ({public_url(config.api_domain)}) right and "
                "reachable from here?"
            )
        if error.status == 401:
            if config.auth == "api_token":
                return (
                    "Pipedrive refused the API token (revoked, or from another company): store "
                    f"a valid one with `ml-connector credentials set {tenant.id} pipedrive "
                    "api_token`"
                )
            return (
                "Pipedrive refused the OAuth grant: authorize the app again and store the new "
                f"refresh token with `ml-connector credentials set {tenant.id} pipedrive "
                "oauth_refresh_token`"
            )
        if error.status == 403:
            return (
                "Pipedrive forbids this: the token was blocked after too many 429s (wait), or "
                "its user lacks permission to read deals and organizations"
            )
        if error.status == 404:
            return (
                f"check pipedrive.api_domain in the tenants file ({tenants_file}): "
                "no Pipedrive API answers there"
            )
        if error.status == 429:
            return "Pipedrive's rate limit is exhausted (burst or daily budget): try later"
        if error.retryable:
            return "Pipedrive is having trouble (retryable error): try again later"
        return "see Pipedrive's error above"

    return fix


def check_ifs(runtime: Runtime, tenant: TenantConfig, tenants_file: str) -> SystemCheck:
    """Authenticate to IFS and read one customer and one order; nothing is written."""
    from connector.ifs.client import IfsClient, ifs_limits
    from connector.ifs.entity_sets import customer_set, order_set
    from connector.ifs.odata import Query

    result = SystemCheck(IFS)
    config = tenant.ifs
    client: IfsClient | None = None

    def secret() -> str | None:
        nonlocal client
        value = runtime.vault.get(tenant.id, IFS, "client_secret")
        limits = ifs_limits(config)
        client = IfsClient(
            config,
            value,
            tenant_id=tenant.id,
            orders=order_set(tenant),
            acquire=runtime.coordination.acquirer(
                f"ifs:{tenant.id}", lambda bucket: limits, max_wait_s=2.0
            ),
            policy=CHECK_POLICY,
            timeout_s=CHECK_TIMEOUT_S,
        )
        return "stored"

    def token() -> str | None:
        assert client is not None
        client.tokens.token()
        return f"token issued to client {config.client_id!r}"

    def first(kind: str) -> Callable[[], str | None]:
        def read() -> str | None:
            assert client is not None
            entity_set = customer_set(tenant) if kind == "customers" else order_set(tenant)
            query = Query(select=[entity_set.key], top=1)
            records = client.iter_records(entity_set, query, page_size=1)
            record = next(iter(records), None)
            return f"read {record.key}" if record is not None else "readable, but empty"

        return read

    try:
        _run_steps(
            result,
            [
                ("credential", f"vault: {tenant.id}/ifs/client_secret", secret),
                ("token", config.effective_token_url, token),
                (
                    "customers",
                    f"{config.projection_root}/{config.customer_projection}/"
                    f"{config.customer_entity_set}",
                    first("customers"),
                ),
                (
                    "orders",
                    f"{config.projection_root}/{config.order_projection}/{config.order_entity_set}",
                    first("orders"),
                ),
            ],
            _ifs_fix(tenant, tenants_file),
            tenant.id,
        )
    finally:
        if client is not None:
            client.close()
    result.headroom = {"ours": _budget(lambda: ifs_budget(runtime, tenant))}
    return result


def check_pipedrive(runtime: Runtime, tenant: TenantConfig, tenants_file: str) -> SystemCheck:
    """Read /v1/users/me and one deal (or organization); report Pipedrive's rate headers."""
    from connector.pipedrive.client import PipedriveClient

    result = SystemCheck(PIPEDRIVE)
    config = tenant.pipedrive
    client: PipedriveClient | None = None
    base = config.api_domain

    def credentials() -> str | None:
        nonlocal client
        client = PipedriveClient.for_tenant(
            tenant,
            vault=runtime.vault,
            coordination=runtime.coordination,
            policy=CHECK_POLICY,
            max_wait_s=2.0,
        )
        return f"{config.auth} stored"

    def me() -> str | None:
        assert client is not None
        user = client.users_me()
        return (
            f"user {user.get('name')!r} (id {user.get('id')}) of company "
            f"{user.get('company_name')!r}"
        )

    def one_record() -> str | None:
        assert client is not None
        deal = next(iter(client.iter_records("deals", limit=1)), None)
        if deal is not None:
            return f"read deal {deal.get('id')}"
        organization = next(iter(client.iter_records("organizations", limit=1)), None)
        if organization is not None:
            return f"no deals yet; read organization {organization.get('id')}"
        return "readable, but no deals or organizations yet"

    credential_name = "api_token" if config.auth == "api_token" else "oauth_refresh_token"
    try:
        _run_steps(
            result,
            [
                ("credential", f"vault: {tenant.id}/pipedrive/{credential_name}", credentials),
                ("users/me", f"{base}/v1/users/me", me),
                ("deals", f"{base}/api/v2/deals", one_record),
            ],
            _pipedrive_fix(tenant, tenants_file),
            tenant.id,
        )
        headers = client.http.last_response_headers if client is not None else {}
    finally:
        if client is not None:
            client.close()
    reported = {name: headers.get(name) for name in PIPEDRIVE_HEADERS}
    result.headroom = {
        "pipedrive": reported,
        "ours": _budget(lambda: pipedrive_budget(runtime, tenant)),
    }
    return result


def check_tenant(
    runtime: Runtime, tenant_id: str, *, tenants_file: str | None = None
) -> CheckReport:
    """Probe both systems of the tenant with reads only (ConfigError for an unknown tenant).

    `tenants_file` is named in fixes that point at the tenants file.
    """
    tenant = runtime.tenant(tenant_id)
    where = tenants_file or str(runtime.settings.tenants_file)
    return CheckReport(
        tenant_id, [check_ifs(runtime, tenant, where), check_pipedrive(runtime, tenant, where)]
    )


# -- status -----------------------------------------------------------------------------------
@dataclass
class TenantStatus:
    """What the database and our limiter know about a tenant (plus Pipedrive's view if asked)."""

    tenant: str
    last_run: dict[str, Any] | None = None
    failed_waiting: int = 0
    failed_keys: list[str] = field(default_factory=list)
    watermarks: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=dict)
    missing_credentials: list[dict[str, str]] = field(default_factory=list)
    headroom: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def last_run(runtime: Runtime, tenant_id: str) -> dict[str, Any] | None:
    """The newest sync run of the tenant (by its plan rows) and how it went."""
    database = runtime.database
    with database.session() as session:
        run_id = session.scalar(
            select(AuditRecord.correlation_id)
            .where(
                AuditRecord.tenant == tenant_id,
                AuditRecord.record_key == "*",
                AuditRecord.operation == "plan",
                AuditRecord.correlation_id.is_not(None),
            )
            .order_by(AuditRecord.id.desc())
            .limit(1)
        )
        if run_id is None:
            return None
        started, finished = session.execute(
            select(func.min(AuditRecord.started_at), func.max(AuditRecord.finished_at)).where(
                AuditRecord.correlation_id == run_id
            )
        ).one()
    summary = run_summary(database, run_id)
    state = "finished" if summary.done >= summary.queued else "running"
    return {
        "run_id": run_id,
        "started_at": _iso(started),
        "finished_at": _iso(finished) if state == "finished" else None,
        "state": state,
        "created": summary.created,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "read": summary.read,
        "queued": summary.queued,
    }


def webhook_status(runtime: Runtime, tenant_id: str, *, remote: bool = False) -> dict[str, Any]:
    """Registration (tenant_state), received events, and with `remote` Pipedrive's own list."""
    state = DatabaseTenantState(runtime.database).get(tenant_id, WEBHOOK_STATE_KEY)
    with runtime.database.session() as session:
        delivered = WebhookEvent.tenant == tenant_id, WebhookEvent.action != RECONCILE_ACTION
        last_event = session.scalar(select(func.max(WebhookEvent.received_at)).where(*delivered))
        total = session.scalar(select(func.count()).where(*delivered)) or 0
        failed = (
            session.scalar(
                select(func.count()).where(
                    WebhookEvent.tenant == tenant_id, WebhookEvent.status == FAILED_EVENT
                )
            )
            or 0
        )
    info: dict[str, Any] = {
        "registered": state is not None,
        "webhook_id": (state or {}).get("webhook_id"),
        "subscription_url": (state or {}).get("subscription_url"),
        "last_event_at": _iso(last_event),
        "events_received": int(total),
        "events_failed": int(failed),
    }
    if remote:
        from connector.webhooks.registration import webhooks_for

        try:
            found = webhooks_for(runtime, tenant_id)
        except ConnectorError as error:
            info["remote"] = {"error": str(error)}
        else:
            info["remote"] = {
                "webhooks": [
                    {
                        key: webhook.get(key)
                        for key in ("id", "is_active", "last_delivery_time", "last_http_status")
                    }
                    for webhook in found
                ],
                "active": any(webhook.get("is_active", True) for webhook in found),
            }
    return info


def missing_credentials(runtime: Runtime, tenant: TenantConfig) -> list[dict[str, str]]:
    """Secrets the tenant's configuration needs that the vault lacks, each with its fix."""
    stored = {(system, name) for _, system, name, _ in runtime.vault.names(tenant.id)}
    missing = []
    for system, name in required_credentials(tenant):
        if (system, name) in stored:
            continue
        if system == "webhook" and name.startswith("basic_"):
            fix = f"`ml-connector webhooks ensure {tenant.id}` (generates and stores them)"
        else:
            fix = f"`ml-connector credentials set {tenant.id} {system} {name}`"
        missing.append({"system": system, "name": name, "fix": fix})
    return missing


def tenant_status(runtime: Runtime, tenant_id: str, *, remote: bool = False) -> TenantStatus:
    """Everything `ml-connector status` shows for one tenant; the database must be migrated."""
    tenant = runtime.tenant(tenant_id)
    status = TenantStatus(tenant_id)
    status.last_run = last_run(runtime, tenant_id)
    failed = AuditLog(runtime.database).latest_failed(tenant_id)
    status.failed_waiting = len(failed)
    status.failed_keys = [f"{row.entity} {row.record_key}" for row in failed[:10]]
    with runtime.database.session() as session:
        rows = session.scalars(
            select(SyncWatermark)
            .where(SyncWatermark.tenant == tenant_id)
            .order_by(SyncWatermark.entity)
        )
        status.watermarks = [
            {
                "entity": row.entity,
                "last_run_at": _iso(row.last_run_at),
                "last_status": row.last_status,
                "last_summary": row.last_summary,
            }
            for row in rows
        ]
    status.webhook = webhook_status(runtime, tenant_id, remote=remote)
    status.missing_credentials = missing_credentials(runtime, tenant)
    status.headroom = {
        IFS: _budget(lambda: ifs_budget(runtime, tenant)),
        PIPEDRIVE: _budget(lambda: pipedrive_budget(runtime, tenant)),
    }
    if status.last_run is None:
        status.problems.append(f"never synced: run `ml-connector sync {tenant_id}`")
    if status.failed_waiting:
        status.problems.append(
            f"{status.failed_waiting} record(s) failed and wait for a replay: see "
            f"`ml-connector audit list --tenant {tenant_id} --status failed`, fix the cause, "
            f"then `ml-connector replay --failed --tenant {tenant_id}`"
        )
    if not status.webhook["registered"]:
        status.problems.append(
            f"no Pipedrive webhook registered: run `ml-connector webhooks ensure {tenant_id}`"
        )
    remote_view = status.webhook.get("remote") or {}
    if "error" in remote_view:
        status.problems.append(f"cannot list Pipedrive webhooks: {remote_view['error']}")
    elif remote_view and not remote_view.get("active"):
        status.problems.append(
            "Pipedrive has no active webhook for the subscription URL: run "
            f"`ml-connector webhooks ensure {tenant_id}`"
        )
    for entry in status.missing_credentials:
        status.problems.append(f"missing {entry['system']} {entry['name']}: {entry['fix']}")
    for system in (IFS, PIPEDRIVE):
        if "error" in status.headroom[system]:
            status.problems.append(status.headroom[system]["error"])
            break
    return status


@dataclass
class QueueStatus:
    """The broker as `status` sees it: queue depths when it is Redis, else why not."""

    broker: str
    depths: dict[str, int] | None = None
    error: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_status(settings: Settings) -> QueueStatus:
    """Depth of the workers' queue (sets mlc_queue_depth); a down broker is a clear error."""
    from connector.metrics import update_queue_depth

    url = settings.effective_broker_url
    shown = public_url(url) if "://" in url and not url.startswith("memory") else url
    result = QueueStatus(shown)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        result.note = "queue depth is measured for Redis brokers only"
        return result
    import redis as redis_lib

    client = redis_lib.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        result.depths = update_queue_depth(client, [settings.queue])
    except RedisError as error:
        result.error = (
            f"broker unreachable at {shown}: {error} "
            "(check CONNECTOR_BROKER_URL and that Redis is running)"
        )
    finally:
        client.close()
    return result
