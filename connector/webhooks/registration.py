"""The tenant's Pipedrive webhook: registered, checked and repaired (v2, deal events, Basic)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.errors import ConfigError
from connector.storage.tenant_state import DatabaseTenantState

if TYPE_CHECKING:
    from connector.runtime import Runtime

EVENT_OBJECT = "deal"
EVENT_ACTION = "*"
VERSION = "2.0"
STATE_KEY = "webhook"


@dataclass
class WebhookStatus:
    """What `ensure_webhook` found and did; `webhooks` never carry the Basic password."""

    tenant: str
    subscription_url: str
    action: str  # ok | created | repaired
    webhook_id: int | None = None
    removed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)


def _public(webhook: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in webhook.items() if k != "http_auth_password"}


def _defects(webhook: dict[str, Any], user: str | None, password: str | None) -> list[str]:
    """Why `webhook` cannot deliver deal events the receiver accepts (empty when it can)."""
    defects = []
    if str(webhook.get("version")) != VERSION:
        defects.append(f"version {webhook.get('version')!r} instead of {VERSION}")
    if webhook.get("event_object") != EVENT_OBJECT:
        defects.append(f"event_object {webhook.get('event_object')!r} instead of deal")
    if webhook.get("event_action") not in (EVENT_ACTION, "change"):
        defects.append(f"event_action {webhook.get('event_action')!r} misses changes")
    if "is_active" in webhook and not webhook.get("is_active"):
        defects.append("inactive (banned or removed by Pipedrive)")
    if user is None or webhook.get("http_auth_user") != user:
        defects.append("Basic user differs from the vault")
    # Listings may omit the password; a present one must match.
    if password is None or webhook.get("http_auth_password") not in (None, password):
        defects.append("Basic password differs from the vault")
    return defects


def webhooks_for(runtime: Runtime, tenant_id: str) -> list[dict[str, Any]]:
    """The Pipedrive webhooks pointing at the tenant's subscription URL (passwords removed)."""
    url = _subscription_url(runtime, tenant_id)
    listing = runtime.pipedrive_client(tenant_id).list_webhooks()
    return [_public(w) for w in listing if w.get("subscription_url") == url]


def ensure_webhook(runtime: Runtime, tenant_id: str) -> WebhookStatus:
    """Register the tenant's deal webhook, or repair it when it is missing, stale or banned.

    Basic credentials are generated and stored in the vault before Pipedrive sees them, so
    the receiver can authenticate the very first delivery. A faulty webhook is deleted only
    after its replacement exists, so no event falls in a gap.
    """
    tenant = runtime.tenant(tenant_id)
    url = _subscription_url(runtime, tenant_id)
    client = runtime.pipedrive_client(tenant_id)
    vault = runtime.vault
    user = vault.get_optional(tenant_id, "webhook", "basic_user")
    password = vault.get_optional(tenant_id, "webhook", "basic_password")
    ours = [w for w in client.list_webhooks() if w.get("subscription_url") == url]
    healthy = [w for w in ours if not _defects(w, user, password)]
    status = WebhookStatus(tenant=tenant_id, subscription_url=url, action="ok")
    if tenant.webhook.auth == "hmac":
        status.problems.append(
            "webhook.auth is 'hmac' but Pipedrive cannot sign: its deliveries will be refused "
            "(use 'basic' or 'both' with a signing proxy)"
        )
    if healthy:
        keep = healthy[0]
        status.webhook_id = int(keep["id"])
    else:
        for webhook in ours:
            status.problems.append(
                f"webhook {webhook.get('id')}: " + "; ".join(_defects(webhook, user, password))
            )
        if user is None or password is None:
            user = user or f"mlc-{tenant_id}"
            password = secrets.token_urlsafe(32)
            vault.set(tenant_id, "webhook", "basic_user", user)
            vault.set(tenant_id, "webhook", "basic_password", password)
        created = client.create_webhook(
            url, EVENT_ACTION, EVENT_OBJECT, user, password, version=VERSION
        )
        status.webhook_id = int(created["id"])
        status.action = "repaired" if ours else "created"
        keep = created
    for webhook in ours:
        if int(webhook["id"]) != status.webhook_id:
            client.delete_webhook(int(webhook["id"]))
            status.removed.append(int(webhook["id"]))
    DatabaseTenantState(runtime.database).put(
        tenant_id, STATE_KEY, {"webhook_id": status.webhook_id, "subscription_url": url}
    )
    status.webhooks = [_public(keep)]
    return status


def _subscription_url(runtime: Runtime, tenant_id: str) -> str:
    url = runtime.tenant(tenant_id).webhook.subscription_url
    if not url:
        raise ConfigError(
            f"tenant {tenant_id!r}: webhook.subscription_url is not set (the public URL "
            f"Pipedrive posts to, ending in /webhooks/pipedrive/{tenant_id})"
        )
    return url
