"""The IFS Cloud projection client: paged and single reads of any entity set, ETag-guarded
order writes and bound actions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin

from connector.errors import RemoteError
from connector.http import Acquire, RemoteSession, RetryPolicy, json_body
from connector.ifs.auth import IfsTokenProvider, shared_token_provider
from connector.ifs.entity_sets import EntitySet, order_set
from connector.ifs.metadata import ProjectionMetadata, parse_metadata
from connector.ifs.odata import Query
from connector.ifs.records import IfsRecord
from connector.ratelimit import Limit
from connector.tenants import IfsConfig, TenantConfig

if TYPE_CHECKING:
    import requests

    from connector.coordination import Coordination

BUCKET = "ifs"


class SecretSource(Protocol):
    """What the client needs of the credentials vault (connector.storage.vault.Vault)."""

    def get(self, tenant: str, system: str, name: str) -> str: ...


def is_not_found(error: Exception) -> bool:
    """True when IFS says the addressed record does not exist (removed by an IFS user)."""
    return isinstance(error, RemoteError) and error.system == "ifs" and error.status == 404


def ifs_limits(config: IfsConfig) -> list[Limit]:
    """The tenant's IFS request budget (1,000 a minute by default)."""
    return [Limit(config.requests_per_minute, 60)]


class IfsClient:
    """One tenant's IFS Cloud: reads of any entity set; writes and actions on its orders.

    `orders` says where the orders live and which property keys them (the tenant's
    `order_mapping.order_no`): stage pushes address orders through it.
    """

    def __init__(
        self,
        config: IfsConfig,
        client_secret: str,
        *,
        tenant_id: str,
        orders: EntitySet,
        acquire: Acquire | None = None,
        session: requests.Session | None = None,
        policy: RetryPolicy | None = None,
        tokens: IfsTokenProvider | None = None,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.tenant_id = tenant_id
        self.orders = orders
        self.tokens = tokens or IfsTokenProvider(
            config.effective_token_url,
            config.client_id,
            client_secret,
            scope=config.scope,
            session=session,
            policy=policy,
            timeout_s=timeout_s,
        )
        self.http = RemoteSession(
            "ifs",
            config.projection_root,
            auth=self.tokens,
            acquire=acquire,
            policy=policy or RetryPolicy(),
            timeout_s=timeout_s,
            session=session,
            on_unauthorized=self.tokens.refresh_after_unauthorized,
            sleep=sleep,
        )

    @classmethod
    def for_tenant(
        cls, tenant: TenantConfig, *, vault: SecretSource, coordination: Coordination
    ) -> IfsClient:
        """The client a worker uses: secret from the vault, the tenant's shared IFS budget."""
        config = tenant.ifs
        secret = vault.get(tenant.id, "ifs", "client_secret")
        limits = ifs_limits(config)
        return cls(
            config,
            secret,
            tenant_id=tenant.id,
            orders=order_set(tenant),
            acquire=coordination.acquirer(f"ifs:{tenant.id}", lambda bucket: limits),
            tokens=shared_token_provider(
                config.effective_token_url, config.client_id, secret, scope=config.scope
            ),
        )

    # -- reads -----------------------------------------------------------------------------
    def iter_records(
        self,
        entity_set: EntitySet,
        query: Query | None = None,
        *,
        page_size: int | None = None,
        server_page_size: int | None = None,
    ) -> Iterator[IfsRecord]:
        """Every entity the query selects, once each, in the order of the entity set's key.

        Pages with $top/$skip windows of `page_size` ordered by the key (after the query's own
        order). Within a window it follows @odata.nextLink, which IFS sends when it pages
        smaller than asked: its own cap, or `server_page_size` (sent as odata.maxpagesize;
        default page_size) when large windows should still arrive as small responses.
        """
        query = query or Query()
        key = entity_set.key
        page_size = page_size or self.config.page_size
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        query = query.ordered_by(key)
        if query.select and key not in query.select:
            query = replace(query, select=(*query.select, key))
        preferred = server_page_size or page_size
        headers = {"Prefer": f"odata.maxpagesize={preferred}", "Accept": "application/json"}
        skip = query.skip or 0
        remaining = query.top
        # $skip paging can repeat a row when another writer inserts ahead of us; never yield twice.
        seen: set[str] = set()
        while remaining is None or remaining > 0:
            top = page_size if remaining is None else min(page_size, remaining)
            url: str | None = self.http.url_for(entity_set.path)
            params: dict[str, str] | None = query.page(top=top, skip=skip).params()
            received = 0
            while url is not None:
                document = self._get_json(url, params=params, headers=headers)
                rows = document.get("value")
                if not isinstance(rows, list):
                    raise RemoteError("ifs", f"{entity_set.path}: answer without a value list")
                for entity in rows:
                    received += 1
                    record = IfsRecord.from_entity(entity, key)
                    if record.key not in seen:
                        seen.add(record.key)
                        yield record
                next_link = document.get("@odata.nextLink")
                url = urljoin(url, next_link) if isinstance(next_link, str) else None
                params = None  # a nextLink carries all its options
            skip += received
            if remaining is not None:
                remaining -= received
            if received < top:
                return

    def get_record(
        self, entity_set: EntitySet, key_value: str, *, select: Sequence[str] = ()
    ) -> IfsRecord:
        """One entity by its key value (NotFound when IFS has none)."""
        key = entity_set.key
        params = Query(select=[*select, key] if select and key not in select else select).params()
        response = self.http.request(
            "GET",
            entity_set.record_path(key_value),
            bucket=BUCKET,
            params=params,
            headers={"Accept": "application/json"},
        )
        entity = json_body(response, "ifs")
        return IfsRecord.from_entity(entity, key, response.headers.get("ETag"))

    def get_order(self, order_no: str) -> IfsRecord:
        """One order by its number (what a stage push reads before it writes)."""
        return self.get_record(self.orders, order_no)

    # -- writes ----------------------------------------------------------------------------
    def patch_order(self, order_no: str, etag: str, changes: dict[str, Any]) -> IfsRecord:
        """PATCH the order guarded by its ETag; PreconditionFailed when the ETag is stale."""
        if not etag:
            raise ValueError("IFS writes need the ETag of the version they change")
        response = self.http.request(
            "PATCH",
            self.orders.record_path(order_no),
            bucket=BUCKET,
            json=changes,
            headers={
                "If-Match": etag,
                "Prefer": "return=representation",
                "Accept": "application/json",
            },
        )
        if response.status_code == 204 or not response.content:
            return self.get_order(order_no)
        entity = json_body(response, "ifs")
        return IfsRecord.from_entity(entity, self.orders.key, response.headers.get("ETag"))

    def order_action(
        self,
        order_no: str,
        etag: str,
        action: str,
        parameters: Mapping[str, Any] | None = None,
    ) -> IfsRecord:
        """Run a bound state action (e.g. "Release") guarded by the ETag; return the order after.

        `parameters` (e.g. {"CancelReason": "CRM"}) are the action's non-binding parameters,
        sent as the JSON body as OData v4 wants them.
        """
        if not etag:
            raise ValueError("IFS actions need the ETag of the version they change")
        path = f"{self.orders.record_path(order_no)}/{self.orders.action_name(action)}"
        response = self.http.request(
            "POST",
            path,
            bucket=BUCKET,
            json=dict(parameters or {}),
            headers={"If-Match": etag, "Accept": "application/json"},
        )
        if response.status_code != 204 and response.content:
            entity = json_body(response, "ifs")
            if isinstance(entity, dict) and self.orders.key in entity and "@odata.etag" in entity:
                return IfsRecord.from_entity(entity, self.orders.key)
        # Void actions answer 204: read the order back for its new state and ETag.
        return self.get_order(order_no)

    # -- metadata --------------------------------------------------------------------------
    def metadata(self, projection: str) -> ProjectionMetadata:
        """The projection's `$metadata` (e.g. `CustomerOrderHandling.svc`), parsed."""
        response = self.http.request(
            "GET",
            f"{projection}/$metadata",
            bucket=BUCKET,
            headers={"Accept": "application/xml"},
        )
        return parse_metadata(response.content)

    def close(self) -> None:
        self.http.close()

    # -- internals -------------------------------------------------------------------------
    def _get_json(
        self, url: str, *, params: dict[str, str] | None, headers: dict[str, str]
    ) -> dict[str, Any]:
        response = self.http.request("GET", url, bucket=BUCKET, params=params, headers=headers)
        document = json_body(response, "ifs")
        if not isinstance(document, dict):
            raise RemoteError("ifs", f"expected a JSON object from {url}")
        return document
