"""Pipedrive authentication: the `x-api-token` header, or OAuth2 bearer tokens kept in the vault."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from connector.errors import ConfigError, MissingCredentialError, RemoteError
from connector.http import RemoteSession, RetryPolicy, json_body

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.tenants import PipedriveConfig

log = logging.getLogger(__name__)

SYSTEM = "pipedrive"
ACCESS_TOKEN = "oauth_access_token"
REFRESH_TOKEN = "oauth_refresh_token"
SCOPE = "oauth_scope"
CLIENT_SECRET = "oauth_client_secret"
ACCESS_EXPIRES_AT = "oauth_access_expires_at"  # unix seconds, as text
API_DOMAIN = "oauth_api_domain"

# Pipedrive access tokens live 60 minutes; renewing 5 minutes early means a request never
# leaves with a token that expires on the way.
DEFAULT_REFRESH_MARGIN_S = 300.0


class SecretStore(Protocol):
    """The part of connector.storage.vault.Vault this module uses."""

    def get(self, tenant: str, system: str, name: str) -> str: ...

    def set(self, tenant: str, system: str, name: str, value: str) -> None: ...


class ApiTokenAuth(AuthBase):
    """Sends the company API token in the `x-api-token` header (never in the query string,
    where it would end up in access logs)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("empty Pipedrive API token")
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["x-api-token"] = self.token
        return request

    def __repr__(self) -> str:
        return "ApiTokenAuth(token=***)"


@dataclass(frozen=True)
class OAuthTokens:
    """One grant as stored in the vault."""

    access_token: str
    refresh_token: str
    expires_at: float
    api_domain: str | None = None

    def expiring(self, now: float, margin_s: float) -> bool:
        return self.expires_at - margin_s <= now


def _optional(vault: SecretStore, tenant_id: str, name: str) -> str | None:
    try:
        return vault.get(tenant_id, SYSTEM, name)
    except MissingCredentialError:
        return None


def read_tokens(vault: SecretStore, tenant_id: str) -> OAuthTokens | None:
    """The stored grant of `tenant_id`, or None when no access token is stored yet."""
    access = _optional(vault, tenant_id, ACCESS_TOKEN)
    refresh = _optional(vault, tenant_id, REFRESH_TOKEN)
    if access is None or refresh is None:
        return None
    try:
        expires_at = float(_optional(vault, tenant_id, ACCESS_EXPIRES_AT) or 0.0)
    except ValueError:
        expires_at = 0.0
    return OAuthTokens(access, refresh, expires_at, _optional(vault, tenant_id, API_DOMAIN))


def _store_grant(
    vault: SecretStore, tenant_id: str, grant: dict[str, Any], now: float, old_refresh: str | None
) -> OAuthTokens:
    access = grant.get("access_token")
    if not isinstance(access, str) or not access:
        raise RemoteError(SYSTEM, "OAuth token endpoint answered without an access_token")
    refresh = grant.get("refresh_token") or old_refresh
    if not isinstance(refresh, str) or not refresh:
        raise RemoteError(SYSTEM, "OAuth token endpoint answered without a refresh_token")
    try:
        expires_in = float(grant.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    api_domain = grant.get("api_domain")
    tokens = OAuthTokens(
        access, refresh, now + expires_in, str(api_domain).rstrip("/") if api_domain else None
    )
    # Refresh token first: a crash in between leaves a usable refresh token and an old access
    # token, which simply gets refreshed again.
    vault.set(tenant_id, SYSTEM, REFRESH_TOKEN, tokens.refresh_token)
    vault.set(tenant_id, SYSTEM, ACCESS_EXPIRES_AT, repr(tokens.expires_at))
    vault.set(tenant_id, SYSTEM, ACCESS_TOKEN, tokens.access_token)
    if tokens.api_domain:
        vault.set(tenant_id, SYSTEM, API_DOMAIN, tokens.api_domain)
    scope = grant.get("scope")
    if isinstance(scope, str) and scope:
        # Kept for `check`: Pipedrive says which scopes it granted only in this answer.
        vault.set(tenant_id, SYSTEM, SCOPE, scope)
    return tokens


def granted_scope(vault: SecretStore, tenant_id: str) -> str | None:
    """The scopes (space-separated) of the tenant's last OAuth grant, when known."""
    return _optional(vault, tenant_id, SCOPE)


TOKEN_POLICY = RetryPolicy(max_tries=3, max_time_s=30.0)


def _token_request(
    config: PipedriveConfig, client_secret: str, form: dict[str, str], policy: RetryPolicy
) -> dict[str, Any]:
    """POST the token endpoint with HTTP Basic client authentication; the grant document."""
    if not config.oauth_client_id:
        raise ConfigError("pipedrive auth oauth2 needs oauth_client_id")
    http = RemoteSession(
        SYSTEM,
        config.oauth_token_url,
        auth=HTTPBasicAuth(config.oauth_client_id, client_secret),
        policy=policy,
    )
    try:
        response = http.request("POST", config.oauth_token_url, data=form)
    except RemoteError as error:
        if error.status in (400, 401):
            raise RemoteError(
                SYSTEM,
                f"OAuth token endpoint refused the {form['grant_type']} grant ({error}); "
                "re-authorize the app for this company",
                status=error.status,
                body=error.body,
            ) from error
        raise
    finally:
        http.close()
    grant = json_body(response, SYSTEM)
    if not isinstance(grant, dict):
        raise RemoteError(SYSTEM, "OAuth token endpoint answered with a non-object document")
    return grant


def exchange_authorization_code(
    config: PipedriveConfig,
    code: str,
    redirect_uri: str,
    vault: SecretStore,
    tenant_id: str,
    *,
    policy: RetryPolicy = TOKEN_POLICY,
    clock: Callable[[], float] = time.time,
) -> OAuthTokens:
    """First-time OAuth setup: trade the authorization code for tokens and store them.

    The client secret must already be in the vault (pipedrive/oauth_client_secret).
    """
    client_secret = vault.get(tenant_id, SYSTEM, CLIENT_SECRET)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    grant = _token_request(config, client_secret, form, policy)
    return _store_grant(vault, tenant_id, grant, clock(), None)


class OAuth2Auth(AuthBase):
    """Bearer auth for an OAuth tenant, renewing the access token before it expires and on 401.

    Every worker process has its own instance; they share the tokens through the vault.
    Refreshing happens under the coordination lock `pd-oauth:<tenant>`, and the vault is
    read again once the lock is held, so when several workers find the token stale at the
    same moment only the first one calls the token endpoint and the others take its result.
    """

    def __init__(
        self,
        tenant_id: str,
        config: PipedriveConfig,
        *,
        vault: SecretStore,
        coordination: Coordination,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        lock_ttl_s: float = 60.0,
        lock_wait_s: float = 60.0,
        token_policy: RetryPolicy = TOKEN_POLICY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.oauth_client_id:
            raise ConfigError(f"tenant {tenant_id!r}: pipedrive auth oauth2 needs oauth_client_id")
        self.tenant_id = tenant_id
        self.config = config
        self.vault = vault
        self.coordination = coordination
        self.refresh_margin_s = refresh_margin_s
        self.lock_ttl_s = lock_ttl_s
        self.lock_wait_s = lock_wait_s
        self.token_policy = token_policy
        self._clock = clock
        self._mutex = threading.Lock()
        self._tokens: OAuthTokens | None = None
        self.refreshes = 0  # token endpoint calls made by this instance

    def __repr__(self) -> str:
        return f"OAuth2Auth(tenant={self.tenant_id!r})"

    @property
    def api_domain(self) -> str | None:
        """The company domain the token endpoint named (None before the first grant)."""
        if self._tokens is not None and self._tokens.api_domain:
            return self._tokens.api_domain
        return _optional(self.vault, self.tenant_id, API_DOMAIN)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.access_token()}"
        return request

    def access_token(self) -> str:
        """A token valid for at least the refresh margin, refreshing first when needed."""
        with self._mutex:
            tokens = self._tokens
            if tokens is None or tokens.expiring(self._clock(), self.refresh_margin_s):
                tokens = read_tokens(self.vault, self.tenant_id)
                if tokens is None or tokens.expiring(self._clock(), self.refresh_margin_s):
                    tokens = self._refresh_locked(tokens.access_token if tokens else None)
                self._tokens = tokens
            return tokens.access_token

    def handle_unauthorized(self) -> bool:
        """RemoteSession's on_unauthorized hook: True when a new token is worth one more try."""
        with self._mutex:
            rejected = self._tokens.access_token if self._tokens else None
            self._tokens = self._refresh_locked(rejected)
            return self._tokens.access_token != rejected

    def refresh(self) -> OAuthTokens:
        """Force a refresh of the current token (e.g. from an operator command)."""
        with self._mutex:
            rejected = self._tokens.access_token if self._tokens else None
            self._tokens = self._refresh_locked(rejected)
            return self._tokens

    def _refresh_locked(self, rejected: str | None) -> OAuthTokens:
        """Renew the token that `rejected` names, unless another worker already did."""
        with self.coordination.lock(
            f"pd-oauth:{self.tenant_id}", ttl_s=self.lock_ttl_s, wait_s=self.lock_wait_s
        ):
            stored = read_tokens(self.vault, self.tenant_id)
            now = self._clock()
            if (
                stored is not None
                and stored.access_token != rejected
                and not stored.expiring(now, self.refresh_margin_s)
            ):
                return stored
            refresh_token = (
                stored.refresh_token
                if stored is not None
                else self.vault.get(self.tenant_id, SYSTEM, REFRESH_TOKEN)
            )
            client_secret = self.vault.get(self.tenant_id, SYSTEM, CLIENT_SECRET)
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
            grant = _token_request(self.config, client_secret, form, self.token_policy)
            self.refreshes += 1
            log.info("refreshed the Pipedrive OAuth access token of tenant %s", self.tenant_id)
            return _store_grant(self.vault, self.tenant_id, grant, now, refresh_token)
