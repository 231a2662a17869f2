"""OAuth2 flows and Pipedrive's rate limits (burst, search, daily budget, 403 block)."""

from __future__ import annotations

import requests


def _me(sim, headers):
    return requests.get(f"{sim.url}/v1/users/me", headers=headers, timeout=5)


def _token(sim, **form):
    return requests.post(
        f"{sim.url}/oauth/token",
        data=form,
        auth=(sim.settings.client_id, sim.settings.client_secret),
        timeout=5,
    )


def test_authorization_code_then_refresh_keeps_the_refresh_token(pipedrive_sim):
    code = pipedrive_sim.control("oauth/authorize", {"scope": "deals:full"})["code"]
    grant = _token(pipedrive_sim, grant_type="authorization_code", code=code).json()
    assert grant["token_type"] == "Bearer"
    assert grant["expires_in"] == pipedrive_sim.settings.access_token_ttl_s
    assert grant["api_domain"] == pipedrive_sim.url
    assert grant["scope"] == "deals:full"
    bearer = {"Authorization": f"Bearer {grant['access_token']}"}
    me = _me(pipedrive_sim, bearer)
    assert me.status_code == 200
    assert me.headers["x-ratelimit-limit"] == str(pipedrive_sim.settings.oauth_burst)
    # A code is single-use.
    again = _token(pipedrive_sim, grant_type="authorization_code", code=code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    pipedrive_sim.control("oauth/expire", {"token": grant["access_token"]})
    assert (
        requests.get(f"{pipedrive_sim.url}/v1/users/me", headers=bearer, timeout=5).status_code
        == 401
    )
    refreshed = _token(
        pipedrive_sim, grant_type="refresh_token", refresh_token=grant["refresh_token"]
    ).json()
    assert refreshed["refresh_token"] == grant["refresh_token"]
    assert refreshed["access_token"] != grant["access_token"]
    fresh = {"Authorization": f"Bearer {refreshed['access_token']}"}
    assert _me(pipedrive_sim, fresh).ok

    pipedrive_sim.control("oauth/revoke", {"token": grant["refresh_token"]})
    assert (
        requests.get(f"{pipedrive_sim.url}/v1/users/me", headers=fresh, timeout=5).status_code
        == 401
    )
    revoked = _token(
        pipedrive_sim, grant_type="refresh_token", refresh_token=grant["refresh_token"]
    )
    assert revoked.status_code == 400


def test_token_endpoint_needs_basic_client_auth(pipedrive_sim):
    code = pipedrive_sim.control("oauth/authorize", {})["code"]
    response = requests.post(
        f"{pipedrive_sim.url}/oauth/token",
        data={"grant_type": "authorization_code", "code": code},
        auth=("sim-client", "wrong"),
        timeout=5,
    )
    assert response.status_code == 401


def test_burst_limit_gives_429_with_headers(pipedrive_sim):
    pipedrive_sim.settings.api_token_burst = 3
    pipedrive_sim.settings.burst_window_s = 60.0  # the window cannot roll over mid-test
    responses = [pipedrive_sim.api("GET", "/api/v2/deals/1") for _ in range(4)]
    assert [r.status_code for r in responses] == [404, 404, 404, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses[:3]] == ["2", "1", "0"]
    limited = responses[3]
    assert limited.headers["x-ratelimit-limit"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) >= 1
    assert limited.json()["success"] is False and limited.json()["errorCode"] == 429
    assert pipedrive_sim.control("stats")["rate_limited_429"] == 1


def test_search_has_its_own_lower_burst_limit(pipedrive_sim):
    pipedrive_sim.settings.search_burst = 2
    pipedrive_sim.settings.burst_window_s = 60.0
    params = {"term": "abc"}
    codes = [
        pipedrive_sim.api("GET", "/api/v2/deals/search", params=params).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    assert pipedrive_sim.api("GET", "/api/v2/deals").status_code == 200


def test_daily_budget_counts_token_costs(pipedrive_sim):
    pipedrive_sim.settings.daily_budget = 25  # list costs 10, POST 5
    assert pipedrive_sim.api("GET", "/api/v2/deals").status_code == 200
    assert pipedrive_sim.api("GET", "/api/v2/deals").status_code == 200
    created = pipedrive_sim.api("POST", "/api/v2/deals", json={"title": "x"})
    assert created.status_code == 200
    assert created.headers["x-daily-requests-left"] == "0"
    assert pipedrive_sim.api("GET", "/api/v2/deals/1").status_code == 429


def test_client_that_ignores_429s_gets_an_html_403_block_page(pipedrive_sim):
    pipedrive_sim.settings.api_token_burst = 1
    pipedrive_sim.settings.burst_window_s = 60.0
    pipedrive_sim.settings.block_after_429s = 3
    codes = [pipedrive_sim.api("GET", "/v1/users/me").status_code for _ in range(5)]
    assert codes == [200, 429, 429, 429, 403]
    blocked = pipedrive_sim.api("GET", "/v1/users/me")
    assert blocked.status_code == 403
    assert blocked.headers["Content-Type"].startswith("text/html")
    assert "<html>" in blocked.text


def test_forced_429s(pipedrive_sim):
    pipedrive_sim.control("faults", {"force_429": 2})
    codes = [pipedrive_sim.api("GET", "/v1/users/me").status_code for _ in range(3)]
    assert codes == [429, 429, 200]
