"""The Pipedrive REST client: v2 records (organizations, deals), pipelines, stages; v1 fields,
webhooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import requests
from requests.auth import AuthBase

from connector.errors import RemoteError
from connector.http import Acquire, RemoteSession, RetryPolicy, json_body, remote_error_text
from connector.pipedrive.auth import ApiTokenAuth, OAuth2Auth
from connector.pipedrive.costs import OPERATIONS, Operation
from connector.ratelimit import Limit, RateLimiter, acquire

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.pipedrive.auth import SecretStore
    from connector.tenants import PipedriveConfig, TenantConfig

SYSTEM = "pipedrive"
BUCKET = "pipedrive"
SEARCH_BUCKET = "pipedrive-search"
# Pipedrive counts a rolling 2 s window at its end; a request granted here reaches it a few
# milliseconds to a few hundred later (network, retries, thread scheduling). Counting over a
# slightly longer window keeps two grants 2 s apart from landing in one Pipedrive window.
BURST_WINDOW_S = 2.5
DAY_S = 86_400.0
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


def daily_limit(config: PipedriveConfig) -> Limit:
    """The company's daily token budget: one counter, whatever bucket spends it."""
    return Limit(config.daily_budget, DAY_S, "daily")


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
    once with the hours still to go.
    """
    key = rate_limit_key(tenant_id)
    day = daily_limit(config)

    def take(bucket: str, cost: int) -> None:
        acquire(
            limiter,
            key,
            cost,
            [*burst_limits(config, bucket), day],
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
        if config.auth == "api_token":
            token = vault.get(tenant.id, SYSTEM, "api_token")
            return cls(
                config.api_domain,
                auth=ApiTokenAuth(token),
                acquire=take,
                policy=policy,
                tenant_id=tenant.id,
                coordination=coordination,
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
