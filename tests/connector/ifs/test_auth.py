"""IFS OAuth2 tokens against the simulator's token endpoint: caching, early renewal, 401s."""

from __future__ import annotations

import pytest

from connector.errors import RemoteError
from connector.ifs.auth import IfsTokenProvider, shared_token_provider
from tests.connector.ifs.conftest import QUICK


class Clock:
    """The client's clock, moved by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider_for(ifs_sim, clock: Clock, secret: str | None = None) -> IfsTokenProvider:
    return IfsTokenProvider(
        ifs_sim.token_url,
        ifs_sim.client_id,
        secret if secret is not None else ifs_sim.client_secret,
        policy=QUICK,
        clock=clock,
    )


def seeded_key(ifs_sim) -> str:
    ifs_sim.state.seed(customers=1, orders=1)
    return ifs_sim.state.insert_order({})["OrderNo"]


def test_token_is_cached_until_shortly_before_expiry(ifs_sim, make_ifs_client):
    key = seeded_key(ifs_sim)
    clock = Clock()
    client = make_ifs_client(tokens=provider_for(ifs_sim, clock))
    client.get_order(key)
    clock.now += 149  # the simulator's tokens live 180 s; renewal is due 30 s early
    client.get_order(key)
    assert ifs_sim.state.stats()["tokens_issued"] == 1
    clock.now += 2
    client.get_order(key)
    stats = ifs_sim.state.stats()
    assert stats["tokens_issued"] == 2 and stats["unauthorized"] == 0


def test_short_lived_tokens_are_renewed_before_expiry(ifs_sim, make_ifs_client):
    key = seeded_key(ifs_sim)
    ifs_sim.state.configure(token_ttl_s=10)
    clock = Clock()
    client = make_ifs_client(tokens=provider_for(ifs_sim, clock))
    client.get_order(key)
    clock.now += 7.9
    client.get_order(key)
    assert ifs_sim.state.stats()["tokens_issued"] == 1
    clock.now += 0.2  # past 80 % of the 10 s lifetime
    client.get_order(key)
    assert ifs_sim.state.stats()["tokens_issued"] == 2


def test_token_refused_by_the_server_is_renewed_once(ifs_sim, ifs_client):
    key = seeded_key(ifs_sim)
    ifs_client.get_order(key)
    ifs_sim.state.advance_clock(400)  # the server now sees the cached token as expired
    assert ifs_client.get_order(key).key == key
    stats = ifs_sim.state.stats()
    assert stats["unauthorized"] == 1 and stats["tokens_issued"] == 2
    assert ifs_client.tokens.tokens_fetched == 2


def test_invalidate_forces_a_new_token(ifs_sim, ifs_client):
    key = seeded_key(ifs_sim)
    ifs_client.get_order(key)
    ifs_client.tokens.invalidate()
    ifs_client.get_order(key)
    assert ifs_sim.state.stats()["tokens_issued"] == 2


def test_wrong_secret_is_reported_not_retried(ifs_sim, make_ifs_client):
    key = seeded_key(ifs_sim)
    client = make_ifs_client(client_secret="wrong")
    with pytest.raises(RemoteError) as raised:
        client.get_order(key)
    error = raised.value
    assert error.status == 401 and not error.retryable
    assert "unauthorized_client" in str(error) and "wrong" not in str(error)
    assert ifs_sim.state.stats()["requests"].get("POST token") == 1


def test_wrong_realm_is_reported(ifs_sim, make_ifs_client):
    client = make_ifs_client(config={"namespace": "elsewhere"})
    with pytest.raises(RemoteError, match="Realm does not exist") as raised:
        client.tokens.token()
    assert raised.value.status == 404


def test_shared_providers_are_per_credentials(ifs_sim):
    one = shared_token_provider(ifs_sim.token_url, "ml-connector", "s1")
    assert shared_token_provider(ifs_sim.token_url, "ml-connector", "s1") is one
    assert shared_token_provider(ifs_sim.token_url, "ml-connector", "s2") is not one
    assert "s1" not in repr(one)


def test_a_changed_secret_forgets_the_provider_of_the_old_one(ifs_sim):
    old = shared_token_provider(ifs_sim.token_url, "rotating-client", "old-secret")
    new = shared_token_provider(ifs_sim.token_url, "rotating-client", "new-secret")
    assert new is not old
    # The old secret's provider (and its cached token) is gone, not kept beside the new one.
    assert shared_token_provider(ifs_sim.token_url, "rotating-client", "old-secret") is not old
