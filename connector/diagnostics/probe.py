"""Live read-only checks of a tenant's IFS and Pipedrive set-up, each failure with its fix,
followed by the fit check of its configuration (connector.diagnostics.fit)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from connector.diagnostics.fit import Finding, FitReport, fit_ifs, fit_pipedrive
from connector.diagnostics.headroom import IFS, PIPEDRIVE, headroom
from connector.diagnostics.urls import public_url
from connector.errors import ConnectorError, MissingCredentialError, RemoteError, VaultError
from connector.http import RetryPolicy
from connector.ifs.client import IfsClient, ifs_limits
from connector.ifs.entity_sets import customer_set, order_set
from connector.ifs.odata import Query
from connector.pipedrive.auth import granted_scope
from connector.pipedrive.client import PipedriveClient
from connector.ratelimit import RateLimited

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig

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
    # The fit check's findings (connector.diagnostics.fit), once the probe itself passed.
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The probe passed (the system answers our credentials); see `fits` for the fit."""
        return self.error is None

    @property
    def fits(self) -> bool:
        return not any(finding.level == "error" for finding in self.findings)

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
            "fit": [asdict(finding) for finding in self.findings],
        }


@dataclass
class CheckReport:
    """What `check` found for one tenant: one SystemCheck per remote system."""

    tenant: str
    systems: list[SystemCheck]

    @property
    def fit(self) -> FitReport:
        return FitReport([finding for system in self.systems for finding in system.findings])

    @property
    def ok(self) -> bool:
        """Both systems answer, and the tenant's configuration fits them."""
        return all(system.ok for system in self.systems) and self.fit.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "systems": [system.as_dict() for system in self.systems],
            "fit": self.fit.as_dict(),
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
    """Authenticate to IFS, read one customer and one order, then the two projections'
    `$metadata` for the fit check; nothing is written."""
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
        if result.ok and client is not None:
            result.findings = fit_ifs(tenant, client)
    finally:
        if client is not None:
            client.close()
    result.headroom = {"ours": headroom(runtime.coordination, tenant, IFS)}
    return result


def check_pipedrive(runtime: Runtime, tenant: TenantConfig, tenants_file: str) -> SystemCheck:
    """Read /v1/users/me and one deal (or organization), then fields, pipelines and stages
    for the fit check; report Pipedrive's rate headers."""
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
        if result.ok and client is not None:
            scope = granted_scope(runtime.vault, tenant.id) if config.auth == "oauth2" else None
            result.findings = fit_pipedrive(tenant, client, scope)
        headers = client.http.last_response_headers if client is not None else {}
    finally:
        if client is not None:
            client.close()
    reported = {name: headers.get(name) for name in PIPEDRIVE_HEADERS}
    result.headroom = {
        "pipedrive": reported,
        "ours": headroom(runtime.coordination, tenant, PIPEDRIVE),
    }
    return result


def check_tenant(
    runtime: Runtime, tenant_id: str, *, tenants_file: str | None = None
) -> CheckReport:
    """Probe both systems of the tenant with reads only (ConfigError for an unknown tenant).

    `tenants_file` is named in fixes that point at the tenants file.
    """
    tenant = runtime.tenant(tenant_id)
    return check_config(runtime, tenant, tenants_file=tenants_file)


def check_config(
    runtime: Runtime, tenant: TenantConfig, *, tenants_file: str | None = None
) -> CheckReport:
    """`check_tenant` for a tenant configuration read from any tenants file."""
    where = tenants_file or str(runtime.settings.tenants_file)
    return CheckReport(
        tenant.id, [check_ifs(runtime, tenant, where), check_pipedrive(runtime, tenant, where)]
    )
