"""The Pipedrive REST client: v2 records (organizations, deals), pipelines, stages; v1 fields,
webhooks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import requests
from requests.auth import AuthBase

from connector.errors import RemoteError
from connector.http import (
    Acquire,
    RemoteSession,
    ResponseHook,
    RetryPolicy,
    json_body,
    remote_error_text,
)
from connector.pipedrive.auth import ApiTokenAuth, OAuth2Auth
from connector.pipedrive.costs import OPERATIONS, Operation
from connector.ratelimit import Limit, RateLimiter, acquire, interactive

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.pipedrive.auth import SecretStore
    from connector.tenants import PipedriveConfig, TenantConfig

SYSTEM = "pipedrive"
BUCKET = "pipedrive"
SEARCH_BUCKET = "pipedrive-search"
log = logging.getLogger(__name__)

# Pipedrive counts arrivals in a rolling 2 s window. A request is granted here before it
# arrives there, and once answered it counts here from the answer on (RateLimiter.settle),
# which is after its arrival: two requests granted a window apart never arrive within 2 s,
# however long either took. The 20 ms cover clock rates, not network times; what Pipedrive
# reports on each answer (x-ratelimit-remaining, see pipedrive_feedback) corrects the rest.
BURST_WINDOW_S = 2.02
DAY_S = 86_400.0
# The end of the daily budget that bulk work leaves to interactive work (single replays,
# webhook-driven syncs): a share of the budget, at least one day's worth of a few records.
DAILY_RESERVE_SHARE = 0.05
DAILY_RESERVE_MIN = 100
# How long a tenant's Pipedrive work pauses after Pipedrive's 403 block page (sent to a client
# that kept going after 429s); Pipedrive does not say how long its block lasts.
BLOCK_PAUSE_S = 60.0
DEFAULT_POLICY = RetryPolicy()
MAX_PAGE = 500  # v2 `limit` maximum; v1 field lists accept it too

FieldEntity = Literal["deal", "organization"]
Resource = Literal["organizations", "deals"]  # v2 record resources (operation name prefix)
FIELD_OPERATIONS: dict[str, str] = {"deal": "dealFields", "organization": "organizationFields"}


def rate_limit_key(tenant_id: str) -> str:
    """The limiter key under which all of one tenant's Pipedrive counters live."""
    return f"pipedrive:{tenant_id}"


def burst_limits(config: PipedriveConfig, bucket: str) -> list[Limit]:
    """Requests per rolling 2 s: every request counts against the token's burst limit, and
    searches also against the separate search limit (as Pipedrive counts them)."""
    limits = [Limit(config.burst_limit, BURST_WINDOW_S, "burst", per_request=True)]
    if bucket == SEARCH_BUCKET:
        limits.append(Limit(config.search_burst_limit, BURST_WINDOW_S, "search", per_request=True))
    return limits


def daily_limit(config: PipedriveConfig, *, bulk: bool = False) -> Limit:
    """The company's daily token budget: one counter, whatever bucket spends it. `bulk` work
    leaves the reserve (daily_reserve) unspent, for interactive work."""
    return Limit(config.daily_budget, DAY_S, "daily", reserve=daily_reserve(config) if bulk else 0)


def daily_reserve(config: PipedriveConfig) -> int:
    """Tokens of the daily budget that only interactive work may spend."""
    reserve = max(DAILY_RESERVE_MIN, round(config.daily_budget * DAILY_RESERVE_SHARE))
    return min(reserve, config.daily_budget // 2)


def is_block_page(response: requests.Response) -> bool:
    """Pipedrive's block for clients that kept going after 429s: a 403 HTML page, where
    Pipedrive's own 403s (permissions) are JSON."""
    content_type = response.headers.get("Content-Type", "")
    return response.status_code == 403 and "text/html" in content_type.lower()


def _header_int(response: requests.Response, name: str) -> int | None:
    value = response.headers.get(name)
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return int(float(value))
    return None


def pipedrive_feedback(
    limiter: RateLimiter, tenant_id: str, config: PipedriveConfig
) -> ResponseHook:
    """A ResponseHook that keeps the tenant's limiter in step with what Pipedrive reports.

    - every answer settles the request's burst grant (RateLimiter.settle): it counts a
      window from the answer on, since Pipedrive saw it at the latest then.
    - `x-ratelimit-remaining` (every answer): Pipedrive counts `limit - remaining` requests in
      its 2 s window; the burst counter never counts fewer (the user's UI actions count there
      too, and a request that took longer than another arrives later than its grant).
    - `x-daily-requests-left` (POST/PUT answers to an API token): the company's budget left
      today, shared with every other app; the daily counter never counts less spent.
    - The 403 block page: every worker's Pipedrive work for the tenant pauses (a pause in the
      limiter, shared through Redis) for BLOCK_PAUSE_S; the hook returns it, so the request
      fails as retryable with that wait instead of failing its record.
    """
    key = rate_limit_key(tenant_id)
    burst = Limit(config.burst_limit, BURST_WINDOW_S, "burst", per_request=True)
    search = Limit(config.search_burst_limit, BURST_WINDOW_S, "search", per_request=True)
    day = daily_limit(config)

    def observe(response: requests.Response) -> float | None:
        if is_block_page(response):
            limiter.pause(key, BLOCK_PAUSE_S)
            log.warning(
                "pipedrive blocked tenant %s (403 block page): its Pipedrive work pauses %.0fs",
                tenant_id,
                BLOCK_PAUSE_S,
            )
            return BLOCK_PAUSE_S
        searched = "/search" in (response.url or "")
        limiter.settle(key, [burst, search] if searched else [burst])
        remaining = _header_int(response, "x-ratelimit-remaining")
        reported = _header_int(response, "x-ratelimit-limit")
        if remaining is not None and reported:
            # A search is answered with the tighter of its two windows: the header's limit
            # says which.
            limit = search if searched and reported == search.capacity else burst
            # Far from the limit a correction could not refuse anything yet: the Redis call
            # is saved until Pipedrive's count comes near it.
            if remaining < limit.capacity // 2:
                limiter.align(key, limit, limit.capacity - remaining)
        left = _header_int(response, "x-daily-requests-left")
        if left is not None:
            limiter.align(key, day, max(0, day.capacity - left))
        return None

    return observe


def pipedrive_acquirer(
    limiter: RateLimiter,
    tenant_id: str,
    config: PipedriveConfig,
    *,
    max_wait_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Acquire:
    """An Acquire for RemoteSession: burst limits count requests, the daily budget token cost,
    all taken in one atomic step (nothing is taken when any of them is exhausted).

    Waits up to `max_wait_s` for the burst window; an exhausted day raises RateLimited at
    once with the hours still to go. Bulk work (anything outside `interactive()`) stops
    short of the day's reserve (daily_reserve).
    """
    key = rate_limit_key(tenant_id)
    day = daily_limit(config)
    bulk_day = daily_limit(config, bulk=True)

    def take(bucket: str, cost: int) -> None:
        acquire(
            limiter,
            key,
            cost,
            [*burst_limits(config, bucket), day if interactive.get() else bulk_day],
            max_wait_s=max_wait_s,
            sleep=sleep,
        )

    return take


def rfc3339(moment: datetime | str) -> str:
    """v2 `updated_since` format (UTC, second resolution, Z suffix); strings pass unchanged."""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_gone(error: Exception) -> bool:
    """True when Pipedrive says the addressed record does not exist (deleted or merged away)."""
    return isinstance(error, RemoteError) and error.system == SYSTEM and error.status in (404, 410)


class PipedriveClient:
    """One tenant's Pipedrive company over HTTP, with the project's retry policy and limiter.

    Methods return the `data` part of Pipedrive's answers. Any error answer raises
    RemoteError carrying Pipedrive's own error text and the HTTP status.
    """

    def __init__(
        self,
        api_domain: str,
        *,
        auth: AuthBase,
        acquire: Acquire | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        timeout_s: float = 30.0,
        on_unauthorized: Callable[[], bool] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tenant_id: str | None = None,
        coordination: Coordination | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.coordination = coordination
        self.http = RemoteSession(
            SYSTEM,
            api_domain,
            auth=auth,
            acquire=acquire,
            policy=policy,
            timeout_s=timeout_s,
            session=session,
            on_unauthorized=on_unauthorized,
            sleep=sleep,
            on_response=on_response,
        )

    @classmethod
    def for_tenant(
        cls,
        tenant: TenantConfig,
        *,
        vault: SecretStore,
        coordination: Coordination,
        policy: RetryPolicy = DEFAULT_POLICY,
        max_wait_s: float = 5.0,
    ) -> PipedriveClient:
        """The client of `tenant`: its credentials from the vault, its limits shared by workers."""
        config = tenant.pipedrive
        take = pipedrive_acquirer(coordination.limiter, tenant.id, config, max_wait_s=max_wait_s)
        feedback = pipedrive_feedback(coordination.limiter, tenant.id, config)
        if config.auth == "api_token":
            token = vault.get(tenant.id, SYSTEM, "api_token")
            return cls(
                config.api_domain,
                auth=ApiTokenAuth(token),
                acquire=take,
                policy=policy,
                tenant_id=tenant.id,
                coordination=coordination,
                on_response=feedback,
            )
        oauth = OAuth2Auth(tenant.id, config, vault=vault, coordination=coordination)
        return cls(
            oauth.api_domain or config.api_domain,
            auth=oauth,
            acquire=take,
            policy=policy,
            on_unauthorized=oauth.handle_unauthorized,
            tenant_id=tenant.id,
            coordination=coordination,
            on_response=feedback,
        )

    @property
    def requests_sent(self) -> int:
        """HTTP attempts made (retries included), for tests and benchmarks."""
        return self.http.requests_sent

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ plumbing
    def _call(
        self,
        name: str,
        *,
        record_id: int | None = None,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        op: Operation = OPERATIONS[name]
        path = op.url_path(id=record_id) if record_id is not None else op.url_path()
        kwargs: dict[str, Any] = {}
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        if body is not None:
            kwargs["json"] = body
        response = self.http.request(
            op.method,
            path,
            bucket=SEARCH_BUCKET if op.is_search else BUCKET,
            cost=op.cost,
            # Every POST here creates something: never blindly repeat one whose answer was lost.
            idempotent=op.method != "POST",
            **kwargs,
        )
        document = json_body(response, SYSTEM)
        if not isinstance(document, dict):
            raise RemoteError(
                SYSTEM, f"{op.method} {path}: expected a JSON object", status=response.status_code
            )
        if document.get("success") is False:
            # A 2xx that still says it failed: treat it like the error it is.
            raise RemoteError(
                SYSTEM,
                remote_error_text(response),
                status=response.status_code,
                body=(response.text or "")[:2000],
            )
        return document

    def _data(self, name: str, **kwargs: Any) -> Any:
        return self._call(name, **kwargs).get("data")

    def _iter_cursor(self, name: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Follow v2 cursor paging (`additional_data.next_cursor`, null at the end)."""
        cursor: str | None = None
        while True:
            document = self._call(name, params={**params, "cursor": cursor})
            yield from document.get("data") or []
            cursor = (document.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return

    def _search(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            document = self._call(name, params={**params, "cursor": cursor})
            items = (document.get("data") or {}).get("items") or []
            found.extend(entry["item"] for entry in items if isinstance(entry.get("item"), dict))
            cursor = (document.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return found

    @staticmethod
    def _list_params(
        updated_since: datetime | str | None,
        custom_fields: Sequence[str] | None,
        limit: int,
    ) -> dict[str, Any]:
        return {
            "limit": max(1, min(limit, MAX_PAGE)),
            "updated_since": rfc3339(updated_since) if updated_since is not None else None,
            "custom_fields": ",".join(custom_fields) if custom_fields else None,
        }

    @staticmethod
    def _search_params(
        term: str, fields: str | None, exact_match: bool, limit: int
    ) -> dict[str, Any]:
        return {
            "term": term,
            "fields": fields,
            "exact_match": "true" if exact_match else None,
            "limit": max(1, min(limit, MAX_PAGE)),
        }

    # ------------------------------------------------------------------ records (v2)
    def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self._data(f"{resource}.create", body=body)
        return data

    def update(self, resource: Resource, record_id: int, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = self._data(f"{resource}.update", record_id=record_id, body=body)
        return data

    def get(self, resource: Resource, record_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self._data(f"{resource}.get", record_id=record_id)
        return data

    def delete(self, resource: Resource, record_id: int) -> None:
        self._call(f"{resource}.delete", record_id=record_id)

    def iter_records(
        self,
        resource: Resource,
        *,
        updated_since: datetime | str | None = None,
        custom_fields: Sequence[str] | None = None,
        limit: int = MAX_PAGE,
        **filters: int | str | None,
    ) -> Iterator[dict[str, Any]]:
        """Every record that is not deleted (updated since the given time), page by page;
        `filters` are the resource's own list parameters (deals: `pipeline_id`)."""
        params = {**self._list_params(updated_since, custom_fields, limit), **filters}
        return self._iter_cursor(f"{resource}.list", params)

    def iter_archived_deals(
        self,
        *,
        updated_since: datetime | str | None = None,
        custom_fields: Sequence[str] | None = None,
        limit: int = MAX_PAGE,
    ) -> Iterator[dict[str, Any]]:
        """Every archived deal (v2 `is_archived`): the deals list leaves them out."""
        params = self._list_params(updated_since, custom_fields, limit)
        return self._iter_cursor("deals.list_archived", params)

    def search(
        self,
        resource: Resource,
        term: str,
        *,
        fields: str | None = "custom_fields",
        exact_match: bool = True,
        limit: int = 100,
        **filters: int | str | None,
    ) -> list[dict[str, Any]]:
        """The `item` of every hit (id, name or title, custom field values as a plain list);
        `filters` are the resource's own search parameters (deals: `organization_id`)."""
        params = {**self._search_params(term, fields, exact_match, limit), **filters}
        return self._search(f"{resource}.search", params)

    # ------------------------------------------------------------------ pipelines & stages (v2)
    def list_pipelines(self) -> list[dict[str, Any]]:
        return list(self._iter_cursor("pipelines.list", {"limit": MAX_PAGE}))

    def create_pipeline(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self._data("pipelines.create", body={"name": name})
        return data

    def list_stages(self, pipeline_id: int) -> list[dict[str, Any]]:
        """The stages of one pipeline in board order."""
        params = {"pipeline_id": pipeline_id, "limit": MAX_PAGE, "sort_by": "order_nr"}
        return list(self._iter_cursor("stages.list", params))

    def create_stage(
        self, pipeline_id: int, name: str, *, deal_probability: int | None = None
    ) -> dict[str, Any]:
        """Append a stage to the pipeline (v2 has no order field: stages go last)."""
        body: dict[str, Any] = {"name": name, "pipeline_id": pipeline_id}
        if deal_probability is not None:
            body["deal_probability"] = deal_probability
        data: dict[str, Any] = self._data("stages.create", body=body)
        return data

    # ------------------------------------------------------------------ custom fields (v1)
    def list_fields(self, entity: FieldEntity) -> list[dict[str, Any]]:
        """Every field definition (standard and custom) of deals or organizations."""
        name = f"{_field_operation(entity)}.list"
        fields: list[dict[str, Any]] = []
        start = 0
        while True:
            document = self._call(name, params={"start": start, "limit": MAX_PAGE})
            chunk = document.get("data") or []
            fields.extend(chunk)
            additional = document.get("additional_data") or {}
            # The spec nests paging under additional_data.pagination.
            paging = additional.get("pagination", additional)
            if not paging.get("more_items_in_collection") or not chunk:
                return fields
            start = int(paging.get("next_start", start + len(chunk)))

    def create_field(
        self,
        entity: FieldEntity,
        name: str,
        field_type: str,
        options: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create a custom field; `options` labels are for enum/set fields."""
        body: dict[str, Any] = {"name": name, "field_type": field_type}
        if options:
            body["options"] = [{"label": label} for label in options]
        data: dict[str, Any] = self._data(f"{_field_operation(entity)}.create", body=body)
        return data

    # ------------------------------------------------------------------ webhooks & me (v1)
    def list_webhooks(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._data("webhooks.list") or []
        return data

    def create_webhook(
        self,
        subscription_url: str,
        event_action: str,
        event_object: str,
        http_auth_user: str | None,
        http_auth_password: str | None,
        version: str = "2.0",
        *,
        name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subscription_url": subscription_url,
            "event_action": event_action,
            "event_object": event_object,
            "name": name or f"ml-connector {event_object}.{event_action}",
            "version": version,
        }
        if http_auth_user is not None:
            body["http_auth_user"] = http_auth_user
        if http_auth_password is not None:
            body["http_auth_password"] = http_auth_password
        data: dict[str, Any] = self._data("webhooks.create", body=body)
        return data

    def delete_webhook(self, webhook_id: int) -> None:
        self._call("webhooks.delete", record_id=webhook_id)

    def users_me(self) -> dict[str, Any]:
        data: dict[str, Any] = self._data("users.me")
        return data


def _field_operation(entity: str) -> str:
    try:
        return FIELD_OPERATIONS[entity]
    except KeyError:
        raise ValueError(f"entity must be 'deal' or 'organization', got {entity!r}") from None
