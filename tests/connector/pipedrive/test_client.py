"""PipedriveClient against the simulator over real HTTP: CRUD, paging, search, errors, limits."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from connector.errors import RemoteError, is_transient
from connector.http import RetryPolicy
from connector.pipedrive.auth import ApiTokenAuth
from connector.pipedrive.client import (
    BLOCK_PAUSE_S,
    BUCKET,
    SEARCH_BUCKET,
    PipedriveClient,
    burst_limits,
    daily_limit,
    daily_reserve,
    pipedrive_acquirer,
    pipedrive_feedback,
    rate_limit_key,
)
from connector.ratelimit import LocalRateLimiter, RateLimited, RedisRateLimiter, interactive_work

pytestmark = pytest.mark.integration


def _custom_field(pipedrive_sim, entity: str, name: str) -> str:
    created = pipedrive_sim.control(
        "seed", {f"{entity}_fields": [{"name": name, "field_type": "varchar"}]}
    )
    return created[f"{entity}_fields"][0]["key"]


def test_organization_crud_round_trip(client: PipedriveClient, pipedrive_sim) -> None:
    key = _custom_field(pipedrive_sim, "organization", "IFS customer id")
    created = client.create("organizations", {"name": "Acme AB", "custom_fields": {key: "C-100"}})
    assert created["name"] == "Acme AB"
    assert created["custom_fields"][key] == "C-100"

    updated = client.update("organizations", created["id"], {"name": "Acme Sweden AB"})
    assert updated["name"] == "Acme Sweden AB"
    assert client.get("organizations", created["id"])["name"] == "Acme Sweden AB"

    client.delete("organizations", created["id"])
    with pytest.raises(RemoteError) as raised:
        client.get("organizations", created["id"])
    assert raised.value.status == 404
    assert pipedrive_sim.state.stats()["records"]["organization"] == 0


def test_deal_crud_round_trip(client: PipedriveClient, pipedrive_sim) -> None:
    org = client.create("organizations", {"name": "Deal Org"})
    deal = client.create(
        "deals", {"title": "Order 1", "value": 125.5, "currency": "SEK", "org_id": org["id"]}
    )
    assert deal["value"] == 125.5
    assert deal["org_id"] == org["id"]
    assert client.update("deals", deal["id"], {"value": 200})["value"] == 200
    assert client.get("deals", deal["id"])["title"] == "Order 1"
    client.delete("deals", deal["id"])
    assert pipedrive_sim.state.stats()["records"]["deal"] == 0


def test_remote_error_carries_pipedrive_error_text(client: PipedriveClient) -> None:
    with pytest.raises(RemoteError) as raised:
        client.create("deals", {"value": 1})  # title is required
    assert raised.value.status == 400
    assert "Title is required" in str(raised.value)
    assert not raised.value.retryable


def test_iter_deals_pages_through_1200_deals_by_cursor(
    client: PipedriveClient, pipedrive_sim
) -> None:
    pipedrive_sim.control("seed", {"deals": [{"title": f"Deal {n}"} for n in range(1200)]})
    before = client.requests_sent

    deals = list(client.iter_records("deals", limit=500))

    assert len(deals) == 1200
    assert len({deal["id"] for deal in deals}) == 1200
    assert client.requests_sent - before == 3  # 500 + 500 + 200
    assert pipedrive_sim.state.stats()["requests"]["GET /api/v2/deals"] == 3


def test_iter_organizations_filters_by_updated_since(
    client: PipedriveClient, pipedrive_sim
) -> None:
    client.create("organizations", {"name": "Old"})
    future = datetime.now(UTC) + timedelta(days=1)
    assert list(client.iter_records("organizations", updated_since=future)) == []
    past = datetime.now(UTC) - timedelta(days=1)
    assert [org["name"] for org in client.iter_records("organizations", updated_since=past)] == [
        "Old"
    ]


def test_search_exact_match_by_custom_field(client: PipedriveClient, pipedrive_sim) -> None:
    org_key = _custom_field(pipedrive_sim, "organization", "IFS customer id")
    deal_key = _custom_field(pipedrive_sim, "deal", "IFS order number")
    wanted = client.create("organizations", {"name": "Wanted", "custom_fields": {org_key: "C-42"}})
    client.create("organizations", {"name": "Near miss", "custom_fields": {org_key: "C-421"}})
    deal = client.create("deals", {"title": "D", "custom_fields": {deal_key: "ORD-7"}})
    client.create("deals", {"title": "E", "custom_fields": {deal_key: "ORD-77"}})

    found = client.search("organizations", "C-42")
    assert [item["id"] for item in found] == [wanted["id"]]
    assert [item["id"] for item in client.search("deals", "ORD-7")] == [deal["id"]]
    assert client.search("deals", "ORD-8") == []
    stats = pipedrive_sim.state.stats()["requests"]
    assert stats["GET /api/v2/organizations/search"] == 1


def test_pipelines_and_stages(client: PipedriveClient) -> None:
    pipeline = client.create_pipeline("IFS sales orders")
    assert any(p["id"] == pipeline["id"] for p in client.list_pipelines())
    first = client.create_stage(pipeline["id"], "Planned")
    second = client.create_stage(pipeline["id"], "Released")
    stages = client.list_stages(pipeline["id"])
    assert [s["id"] for s in stages] == [first["id"], second["id"]]


def test_fields_webhooks_and_me(client: PipedriveClient, pipedrive_sim) -> None:
    created = client.create_field("deal", "Region", "varchar")
    assert len(created["key"]) == 40
    assert created["key"] in {f["key"] for f in client.list_fields("deal")}
    assert created["key"] not in {f["key"] for f in client.list_fields("organization")}
    with pytest.raises(ValueError):
        client.list_fields("person")  # type: ignore[arg-type]

    hook = client.create_webhook(
        "http://127.0.0.1:9/webhooks/pipedrive/t", "*", "deal", "user", "secret"
    )
    assert hook["version"] == "2.0"
    assert [h["id"] for h in client.list_webhooks()] == [hook["id"]]
    client.delete_webhook(hook["id"])
    assert client.list_webhooks() == []

    me = client.users_me()
    assert me["id"] == pipedrive_sim.settings.integration_user_id


def test_revoked_api_token_gives_clean_401(client: PipedriveClient, pipedrive_sim) -> None:
    pipedrive_sim.control("api-tokens/revoke", {"token": pipedrive_sim.api_token})
    before = client.requests_sent
    with pytest.raises(RemoteError) as raised:
        client.users_me()
    assert raised.value.status == 401
    assert "unauthorized access" in str(raised.value)
    assert client.requests_sent - before == 1  # a 401 is not retried


def test_429_is_retried_after_the_servers_wait(pipedrive_sim) -> None:
    waits: list[float] = []
    client = PipedriveClient(
        pipedrive_sim.url,
        auth=ApiTokenAuth(pipedrive_sim.api_token),
        policy=RetryPolicy(base_s=0.01, cap_s=0.05),
        sleep=waits.append,  # record the waits instead of spending them
    )
    pipedrive_sim.control("faults", {"force_429": 2})

    assert client.users_me()["id"] == pipedrive_sim.settings.integration_user_id

    assert client.requests_sent == 3
    assert len(waits) == 2
    assert all(wait >= 1.0 for wait in waits)  # the simulator's Retry-After is 1 s
    assert pipedrive_sim.state.stats()["rate_limited_429"] == 2


def test_requests_take_tenant_limiter_tokens(pipedrive_sim, tenant, vault, coordination) -> None:
    vault.set(tenant.id, "pipedrive", "api_token", pipedrive_sim.api_token)
    client = PipedriveClient.for_tenant(tenant, vault=vault, coordination=coordination)
    client.users_me()  # cost 2
    client.search("deals", "X-1")  # cost 20
    day = daily_limit(tenant.pipedrive)
    # What is left of the shared daily budget: a request for exactly the rest still fits,
    # one more token does not.
    limiter = coordination.limiter
    key = rate_limit_key(tenant.id)
    assert limiter.try_acquire(key, tenant.pipedrive.daily_budget - 22 + 1, [day]) > 0
    assert limiter.try_acquire(key, tenant.pipedrive.daily_budget - 22, [day]) == 0


def test_daily_budget_is_shared_by_both_buckets_and_refuses_without_waiting(tenant) -> None:
    limiter = LocalRateLimiter()
    config = tenant.pipedrive.model_copy(update={"daily_budget": 30})
    take = pipedrive_acquirer(limiter, tenant.id, config, max_wait_s=0.0)
    with interactive_work():  # the whole budget, reserve included
        take(BUCKET, 10)
        take(SEARCH_BUCKET, 20)
        with pytest.raises(RateLimited) as raised:
            take(BUCKET, 1)
    assert raised.value.retry_after_s > 3600


def test_bulk_work_stops_at_the_daily_reserve_which_interactive_work_spends(tenant) -> None:
    limiter = LocalRateLimiter()
    config = tenant.pipedrive.model_copy(update={"daily_budget": 1000})
    reserve = daily_reserve(config)
    assert reserve == 100
    take = pipedrive_acquirer(limiter, tenant.id, config, max_wait_s=0.0)
    for _ in range((1000 - reserve) // 10):
        take(BUCKET, 10)
    with pytest.raises(RateLimited) as raised:
        take(BUCKET, 1)  # bulk: the reserve is not its to spend
    assert raised.value.retry_after_s > 3600
    with interactive_work():
        for _ in range(reserve // 10):
            take(BUCKET, 10)
        with pytest.raises(RateLimited):
            take(BUCKET, 1)


def _fed_client(pipedrive_sim, tenant, limiter, waits: list[float]) -> PipedriveClient:
    """A client with the tenant's limiter and Pipedrive's feedback, recording its waits."""
    return PipedriveClient(
        pipedrive_sim.url,
        auth=ApiTokenAuth(pipedrive_sim.api_token),
        acquire=pipedrive_acquirer(limiter, tenant.id, tenant.pipedrive, max_wait_s=0.0),
        on_response=pipedrive_feedback(limiter, tenant.id, tenant.pipedrive),
        policy=RetryPolicy(base_s=0.01, cap_s=0.05),
        sleep=waits.append,
    )


def test_what_pipedrive_reports_corrects_the_burst_and_daily_counters(
    pipedrive_sim, tenant
) -> None:
    # Pipedrive allows 20 per 2 s while the tenant's configuration says 1000, and the company
    # spent most of its day elsewhere: the answers' headers bring both counters in step.
    pipedrive_sim.control("settings", {"api_token_burst": 20, "daily_budget": 5000})
    pipedrive_sim.state.limiter.daily_spent = 4000
    limiter = LocalRateLimiter()
    client = _fed_client(pipedrive_sim, tenant, limiter, [])
    key = rate_limit_key(tenant.id)
    burst = burst_limits(tenant.pipedrive, BUCKET)[0]
    for _ in range(11):
        client.users_me()
    assert limiter.usage(key, [burst])[0].used == 1000 - 9
    client.create("organizations", {"name": "Spent"})  # a POST: x-daily-requests-left
    day = daily_limit(tenant.pipedrive)
    left = pipedrive_sim.state.limiter.daily_left()
    assert limiter.usage(key, [day])[0].used == tenant.pipedrive.daily_budget - left
    assert pipedrive_sim.state.stats()["rate_limited_429"] == 0


def test_the_403_block_page_pauses_the_tenant_for_every_worker_and_is_retryable(
    pipedrive_sim, tenant, redis_url, redis_prefix
) -> None:
    pipedrive_sim.control("settings", {"block_after_429s": 2, "block_seconds": 0.2})
    pipedrive_sim.control("faults", {"force_429": 2})
    one = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    other = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    waits: list[float] = []
    client = _fed_client(pipedrive_sim, tenant, one, waits)

    with pytest.raises(RemoteError) as raised:
        client.users_me()  # 429, 429 (now blocked), 403

    blocked = raised.value
    assert blocked.status == 403 and blocked.retryable and is_transient(blocked)
    assert blocked.retry_after_s == BLOCK_PAUSE_S
    assert client.requests_sent == 3 and len(waits) == 2  # the 403 is not retried in place
    key = rate_limit_key(tenant.id)
    assert other.paused_for(key) > BLOCK_PAUSE_S - 5
    sent = pipedrive_sim.state.stats()["requests_total"]
    elsewhere = _fed_client(pipedrive_sim, tenant, other, [])
    with pytest.raises(RateLimited) as paused:
        elsewhere.users_me()  # another worker: refused by the shared pause, nothing sent
    assert paused.value.retry_after_s > BLOCK_PAUSE_S - 5
    assert pipedrive_sim.state.stats()["requests_total"] == sent
    # Pipedrive lifted its block (0.2 s here); once the pause ends, work resumes.
    one.client.delete(f"{redis_prefix}{{{key}}}:pause")
    time.sleep(0.3)
    assert elsewhere.users_me()["id"] == pipedrive_sim.settings.integration_user_id


def test_search_burst_limit_is_separate_from_the_general_one(tenant) -> None:
    limiter = LocalRateLimiter()
    config = tenant.pipedrive.model_copy(update={"burst_limit": 5, "search_burst_limit": 2})
    take = pipedrive_acquirer(limiter, tenant.id, config, max_wait_s=0.0)
    take(SEARCH_BUCKET, 1)
    take(SEARCH_BUCKET, 1)
    with pytest.raises(RateLimited):
        take(SEARCH_BUCKET, 1)
    take(BUCKET, 1)
    take(BUCKET, 1)
    take(BUCKET, 1)  # searches count against the general burst too: 2 + 3 = 5
    with pytest.raises(RateLimited):
        take(BUCKET, 1)
