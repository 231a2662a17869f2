"""Keycloak-style client-credentials tokens and bearer checks on the projections."""

from __future__ import annotations

import base64

import requests


def token_request(sim, **form):
    data = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "openid microprofile-jwt",
        **form,
    }
    return requests.post(sim.token_url, data={k: v for k, v in data.items() if v}, timeout=10)


def test_client_credentials_grant_returns_a_keycloak_token_response(ifs_sim):
    response = token_request(ifs_sim)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 180
    assert body["scope"] == "openid microprofile-jwt"
    assert body["access_token"].count(".") == 2
    assert ifs_sim.state.stats()["tokens_issued"] == 1


def test_basic_client_authentication_is_accepted(ifs_sim):
    basic = base64.b64encode(f"{ifs_sim.client_id}:{ifs_sim.client_secret}".encode()).decode()
    response = requests.post(
        ifs_sim.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_wrong_secret_is_unauthorized_client(ifs_sim):
    response = token_request(ifs_sim, client_secret="nope")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized_client"
    assert response.json()["error_description"]


def test_unknown_client_is_invalid_client(ifs_sim):
    response = token_request(ifs_sim, client_id="stranger")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_other_grant_type_and_unknown_realm_are_refused(ifs_sim):
    assert token_request(ifs_sim, grant_type="password").json()["error"] == (
        "unsupported_grant_type"
    )
    other_realm = ifs_sim.token_url.replace(f"/realms/{ifs_sim.namespace}/", "/realms/other/")
    assert requests.post(other_realm, data={}, timeout=10).status_code == 404


def test_api_without_or_with_bad_bearer_is_401(ifs_sim):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        response = requests.get(ifs_sim.orders_url, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json() == {"error": {"message": "Unauthorized"}}
    assert ifs_sim.state.stats()["unauthorized"] == 3


def test_token_expires_after_its_ttl(ifs_sim):
    ifs_sim.state.configure(token_ttl_s=5)
    token = token_request(ifs_sim).json()
    assert token["expires_in"] == 5
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert requests.get(ifs_sim.orders_url, headers=headers, timeout=10).status_code == 200
    ifs_sim.state.advance_clock(6)
    assert requests.get(ifs_sim.orders_url, headers=headers, timeout=10).status_code == 401


def test_token_from_another_simulator_is_rejected(ifs_sim, ifs_sim_factory):
    other = ifs_sim_factory(namespace="ifsdemo")
    headers = {"Authorization": f"Bearer {other.token()}"}
    assert requests.get(ifs_sim.orders_url, headers=headers, timeout=10).status_code == 401
    assert requests.get(other.orders_url, headers=headers, timeout=10).status_code == 200


def test_custom_namespace_and_clients(ifs_sim_factory):
    sim = ifs_sim_factory(namespace="acme", clients={"a": "b"})
    assert "/auth/realms/acme/" in sim.token_url
    assert sim.client_id == "a"
    assert requests.get(sim.customers_url, headers=sim.headers(), timeout=10).status_code == 200
