"""Pipedrive authentication against the simulator: API token header, OAuth code exchange,
refresh before expiry and on 401, one refresh for concurrent workers, revoked grants."""

from __future__ import annotations

import threading
import time

import pytest

from connector.errors import RemoteError
from connector.pipedrive import auth as oauth
from connector.pipedrive.auth import (
    OAuth2Auth,
    exchange_authorization_code,
    granted_scope,
    read_tokens,
)
from connector.pipedrive.client import PipedriveClient

from .conftest import make_tenant

pytestmark = pytest.mark.integration

REDIRECT_URI = "https://connector.example/oauth/callback"


@pytest.fixture
def oauth_tenant(pipedrive_sim, vault):
    """An OAuth tenant that has completed the authorization-code exchange."""
    settings = pipedrive_sim.settings
    tenant = make_tenant(
        "https://unused.pipedrive.example",
        auth="oauth2",
        oauth_client_id=settings.client_id,
        oauth_token_url=f"{pipedrive_sim.url}/oauth/token",
    )
    vault.set(tenant.id, "pipedrive", oauth.CLIENT_SECRET, settings.client_secret)
    code = pipedrive_sim.control("oauth/authorize", {"redirect_uri": REDIRECT_URI})["code"]
    exchange_authorization_code(tenant.pipedrive, code, REDIRECT_URI, vault, tenant.id)
    return tenant


def grants_issued(pipedrive_sim) -> int:
    """Access tokens the simulator has handed out (one per code exchange or refresh)."""
    with pipedrive_sim.state.lock:
        return len(pipedrive_sim.state.access_tokens)


def test_api_token_goes_in_header_not_query(pipedrive_sim) -> None:
    from connector.pipedrive.auth import ApiTokenAuth

    client = PipedriveClient(pipedrive_sim.url, auth=ApiTokenAuth(pipedrive_sim.api_token))
    response = client.http.request("GET", "/v1/users/me", bucket="pipedrive", cost=2)
    assert response.request.headers["x-api-token"] == pipedrive_sim.api_token
    assert "api_token" not in (response.request.url or "")
    assert "***" in repr(ApiTokenAuth("secret")) and "secret" not in repr(ApiTokenAuth("secret"))


def test_code_exchange_stores_tokens_and_api_domain(oauth_tenant, vault, pipedrive_sim) -> None:
    tokens = read_tokens(vault, oauth_tenant.id)
    assert tokens is not None
    assert tokens.api_domain == pipedrive_sim.url
    assert tokens.expires_at > time.time() + 3000


def test_the_granted_scope_is_kept_for_check(oauth_tenant, vault, pipedrive_sim) -> None:
    # The simulator grants its default scope, as Pipedrive names them.
    assert granted_scope(vault, oauth_tenant.id) == "base deals:full contacts:full admin"


def test_oauth_client_uses_api_domain_from_grant(oauth_tenant, vault, coordination, pipedrive_sim):
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)
    assert client.http.base_url == pipedrive_sim.url
    assert client.users_me()["id"] == pipedrive_sim.settings.integration_user_id
    assert grants_issued(pipedrive_sim) == 1  # no refresh needed for a fresh token


def test_refreshes_before_expiry(oauth_tenant, vault, coordination, pipedrive_sim) -> None:
    # The stored token has 60 s left: inside the 5-minute margin, so renew before sending.
    vault.set(oauth_tenant.id, "pipedrive", oauth.ACCESS_EXPIRES_AT, str(time.time() + 60))
    old = read_tokens(vault, oauth_tenant.id)
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)

    client.users_me()

    new = read_tokens(vault, oauth_tenant.id)
    assert old is not None and new is not None
    assert new.access_token != old.access_token
    assert new.refresh_token == old.refresh_token
    assert grants_issued(pipedrive_sim) == 2
    assert pipedrive_sim.state.stats()["unauthorized_401"] == 0  # never sent the old one


def test_refreshes_on_401_and_retries_once(oauth_tenant, vault, coordination, pipedrive_sim):
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)
    client.users_me()
    old = read_tokens(vault, oauth_tenant.id)
    assert old is not None
    pipedrive_sim.control("oauth/expire", {"token": old.access_token})  # server-side only

    assert client.users_me()["id"] == pipedrive_sim.settings.integration_user_id

    stats = pipedrive_sim.state.stats()
    assert stats["unauthorized_401"] == 1
    assert grants_issued(pipedrive_sim) == 2
    new = read_tokens(vault, oauth_tenant.id)
    assert new is not None and new.access_token != old.access_token


def test_concurrent_workers_refresh_once(oauth_tenant, vault, coordination, pipedrive_sim) -> None:
    vault.set(oauth_tenant.id, "pipedrive", oauth.ACCESS_EXPIRES_AT, str(time.time() - 1))
    workers = [
        OAuth2Auth(oauth_tenant.id, oauth_tenant.pipedrive, vault=vault, coordination=coordination)
        for _ in range(4)
    ]
    barrier = threading.Barrier(len(workers))
    tokens: list[str] = []
    errors: list[BaseException] = []

    def run(worker: OAuth2Auth) -> None:
        try:
            barrier.wait()
            tokens.append(worker.access_token())
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sum(worker.refreshes for worker in workers) == 1
    assert grants_issued(pipedrive_sim) == 2  # the code exchange + exactly one refresh
    assert len(set(tokens)) == 1


def test_revoked_grant_raises_clean_remote_error(oauth_tenant, vault, coordination, pipedrive_sim):
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)
    tokens = read_tokens(vault, oauth_tenant.id)
    assert tokens is not None
    pipedrive_sim.control("oauth/revoke", {"token": tokens.refresh_token})

    with pytest.raises(RemoteError) as raised:
        client.users_me()

    assert "invalid_grant" in str(raised.value)
    assert "re-authorize" in str(raised.value)
    assert not raised.value.retryable
    assert pipedrive_sim.state.stats()["unauthorized_401"] == 1


def test_wrong_client_secret_is_reported(oauth_tenant, vault, coordination, pipedrive_sim) -> None:
    vault.set(oauth_tenant.id, "pipedrive", oauth.CLIENT_SECRET, "not-the-secret")
    vault.set(oauth_tenant.id, "pipedrive", oauth.ACCESS_EXPIRES_AT, "0")
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)
    with pytest.raises(RemoteError) as raised:
        client.users_me()
    assert raised.value.status == 401
    assert "invalid_client" in str(raised.value)


def test_refresh_token_alone_is_enough_to_start(oauth_tenant, vault, coordination, pipedrive_sim):
    # What an operator stores by hand: client secret and refresh token, no access token yet.
    assert vault.delete(oauth_tenant.id, "pipedrive", oauth.ACCESS_TOKEN)
    client = PipedriveClient.for_tenant(oauth_tenant, vault=vault, coordination=coordination)
    assert client.users_me()["id"] == pipedrive_sim.settings.integration_user_id
    assert grants_issued(pipedrive_sim) == 2
    assert read_tokens(vault, oauth_tenant.id) is not None


def test_bad_authorization_code_is_refused(pipedrive_sim, vault) -> None:
    tenant = make_tenant(
        pipedrive_sim.url,
        auth="oauth2",
        oauth_client_id=pipedrive_sim.settings.client_id,
        oauth_token_url=f"{pipedrive_sim.url}/oauth/token",
    )
    vault.set(tenant.id, "pipedrive", oauth.CLIENT_SECRET, pipedrive_sim.settings.client_secret)
    with pytest.raises(RemoteError) as raised:
        exchange_authorization_code(
            tenant.pipedrive, "no-such-code", REDIRECT_URI, vault, tenant.id
        )
    assert raised.value.status == 400
    assert "authorization_code" in str(raised.value)
    assert read_tokens(vault, tenant.id) is None
