"""The IFS Cloud projection client: paged reads, single reads, ETag-guarded writes and actions."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urljoin

from connector.errors import RemoteError
from connector.http import Acquire, RemoteSession, RetryPolicy, json_body
from connector.ifs.auth import IfsTokenProvider, shared_token_provider
from connector.ifs.odata import Query
from connector.ifs.records import IfsRecord
from connector.ratelimit import Limit
from connector.tenants import IfsConfig, TenantConfig

if TYPE_CHECKING:
    import requests

    from connector.coordination import Coordination

CUSTOMER_KEY = "CustomerId"
ORDER_KEY = "OrderNo"
BUCKET = "ifs"
_ACTION = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SecretSource(Protocol):
    """What the client needs of the credentials vault (connector.storage.vault.Vault)."""

    def get(self, tenant: str, system: str, name: str) -> str: ...


def key_segment(entity_set: str, key_property: str, value: str) -> str:
    """`CustomerOrderSet(OrderNo='O''1%2F2')`: the quote doubled, then URL-encoded."""
    escaped = quote(str(value).replace("'", "''"), safe="")
    return f"{entity_set}({key_property}='{escaped}')"


def ifs_limits(config: IfsConfig) -> list[Limit]:
    """The tenant's IFS request budget (1,000 a minute by default)."""
    return [Limit(config.requests_per_minute, 60)]


class IfsClient:
    """One tenant's IFS Cloud: customers (`CustomerInfoSet`) and orders (`CustomerOrderSet`)."""

    def __init__(
        self,
        config: IfsConfig,
        client_secret: str,
        *,
        tenant_id: str,
        acquire: Acquire | None = None,
        session: requests.Session | None = None,
        policy: RetryPolicy | None = None,
        tokens: IfsTokenProvider | None = None,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.tenant_id = tenant_id
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
            acquire=coordination.acquirer(f"ifs:{tenant.id}", lambda bucket: limits),
            tokens=shared_token_provider(
                config.effective_token_url, config.client_id, secret, scope=config.scope
            ),
        )

    # -- paths -----------------------------------------------------------------------------
    @property
    def customers_path(self) -> str:
        return f"{self.config.customer_projection}/{self.config.customer_entity_set}"

    @property
    def orders_path(self) -> str:
        return f"{self.config.order_projection}/{self.config.order_entity_set}"

    def customer_path(self, customer_id: str) -> str:
        segment = key_segment(self.config.customer_entity_set, CUSTOMER_KEY, customer_id)
        return f"{self.config.customer_projection}/{segment}"

    def order_path(self, order_no: str) -> str:
        segment = key_segment(self.config.order_entity_set, ORDER_KEY, order_no)
        return f"{self.config.order_projection}/{segment}"

    def order_action_name(self, action: str) -> str:
        """`IfsApp.CustomerOrderHandling.CustomerOrder_Release` for action "Release"."""
        if not _ACTION.match(action):
            raise ValueError(f"not an action name: {action!r}")
        namespace = self.config.order_projection.removesuffix(".svc")
        entity = self.config.order_entity_set.removesuffix("Set")
        return f"IfsApp.{namespace}.{entity}_{action}"

    def _key_property(self, entity_set_path: str) -> str:
        if entity_set_path == self.customers_path:
            return CUSTOMER_KEY
        if entity_set_path == self.orders_path:
            return ORDER_KEY
        raise ValueError(f"unknown entity set {entity_set_path!r}: pass key=")

    # -- reads -----------------------------------------------------------------------------
    def iter_records(
        self,
        entity_set_path: str,
        query: Query | None = None,
        *,
        page_size: int | None = None,
        key: str | None = None,
        server_page_size: int | None = None,
    ) -> Iterator[IfsRecord]:
        """Every entity the query selects, once each, in key order.

        Pages with $top/$skip windows of `page_size` ordered by the key (after the query's own
        order). Within a window it follows @odata.nextLink, which IFS sends when it pages
        smaller than asked: its own cap, or `server_page_size` (sent as odata.maxpagesize;
        default page_size) when large windows should still arrive as small responses.
        """
        query = query or Query()
        key = key or self._key_property(entity_set_path)
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
            url: str | None = self.http.url_for(entity_set_path)
            params: dict[str, str] | None = query.page(top=top, skip=skip).params()
            received = 0
            while url is not None:
                document = self._get_json(url, params=params, headers=headers)
                rows = document.get("value")
                if not isinstance(rows, list):
                    raise RemoteError("ifs", f"{entity_set_path}: answer without a value list")
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

    def iter_customers(
        self,
        query: Query | None = None,
        *,
        page_size: int | None = None,
        server_page_size: int | None = None,
    ) -> Iterator[IfsRecord]:
        return self.iter_records(
            self.customers_path,
            query,
            page_size=page_size,
            key=CUSTOMER_KEY,
            server_page_size=server_page_size,
        )

    def iter_orders(
        self,
        query: Query | None = None,
        *,
        page_size: int | None = None,
        server_page_size: int | None = None,
    ) -> Iterator[IfsRecord]:
        return self.iter_records(
            self.orders_path,
            query,
            page_size=page_size,
            key=ORDER_KEY,
            server_page_size=server_page_size,
        )

    def get_customer(self, customer_id: str, *, select: Sequence[str] = ()) -> IfsRecord:
        return self._get_record(self.customer_path(customer_id), CUSTOMER_KEY, select)

    def get_order(self, order_no: str, *, select: Sequence[str] = ()) -> IfsRecord:
        return self._get_record(self.order_path(order_no), ORDER_KEY, select)

    # -- writes ----------------------------------------------------------------------------
    def patch_order(self, order_no: str, etag: str, changes: dict[str, Any]) -> IfsRecord:
        """PATCH the order guarded by its ETag; PreconditionFailed when the ETag is stale."""
        if not etag:
            raise ValueError("IFS writes need the ETag of the version they change")
        response = self.http.request(
            "PATCH",
            self.order_path(order_no),
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
        return IfsRecord.from_entity(entity, ORDER_KEY, response.headers.get("ETag"))

    def order_action(self, order_no: str, etag: str, action: str) -> IfsRecord:
        """Run a bound state action (e.g. "Release") guarded by the ETag; return the order after."""
        if not etag:
            raise ValueError("IFS actions need the ETag of the version they change")
        path = f"{self.order_path(order_no)}/{self.order_action_name(action)}"
        response = self.http.request(
            "POST",
            path,
            bucket=BUCKET,
            json={},
            headers={"If-Match": etag, "Accept": "application/json"},
        )
        if response.status_code != 204 and response.content:
            entity = json_body(response, "ifs")
            if isinstance(entity, dict) and ORDER_KEY in entity and "@odata.etag" in entity:
                return IfsRecord.from_entity(entity, ORDER_KEY)
        # Void actions answer 204: read the order back for its new state and ETag.
        return self.get_order(order_no)

    # -- health ----------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        """Authenticate and read one customer and one order; what `ml-connector check` shows."""
        self.tokens.token()
        result: dict[str, Any] = {
            "token_url": self.config.effective_token_url,
            "authenticated": True,
        }
        for label, path, key in (
            ("customers", self.customers_path, CUSTOMER_KEY),
            ("orders", self.orders_path, ORDER_KEY),
        ):
            document = self._get_json(
                self.http.url_for(path),
                params=Query(select=[key], top=1).params(),
                headers={"Accept": "application/json"},
            )
            rows = document.get("value") or []
            result[label] = {"path": path, "sample_key": rows[0].get(key) if rows else None}
        return result

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

    def _get_record(self, path: str, key: str, select: Sequence[str]) -> IfsRecord:
        params = Query(select=[*select, key] if select and key not in select else select).params()
        response = self.http.request(
            "GET", path, bucket=BUCKET, params=params, headers={"Accept": "application/json"}
        )
        entity = json_body(response, "ifs")
        return IfsRecord.from_entity(entity, key, response.headers.get("ETag"))
