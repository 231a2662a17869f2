"""The tenant's Pipedrive webhooks: registered, checked and repaired (v2, Basic): deal changes,
and deletes of deals and organizations."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.errors import ConfigError
from connector.storage.tenant_state import DatabaseTenantState

if TYPE_CHECKING:
    from connector.runtime import Runtime

VERSION = "2.0"
STATE_KEY = "webhook"
# Pipedrive gives each webhook one event_action and one event_object. The connector needs
# deal changes (stage moves), and deletes of deals and organizations (merges arrive as
# deletes naming the survivor): never creates, so its own creates do not come back.
SUBSCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("change", "deal"),
    ("delete", "deal"),
    ("delete", "organization"),
)
PRIMARY = "change.deal"  # the id `status` shows as the tenant's webhook


@dataclass
class WebhookStatus:
    """What `ensure_webhook` found and did; `webhooks` never carry the Basic password."""

    tenant: str
    subscription_url: str
    action: str  # ok | created | repaired
    webhook_id: int | None = None  # the deal-change webhook
    webhook_ids: dict[str, int] = field(default_factory=dict)  # "action.object" → id
    removed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)


def _public(webhook: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in webhook.items() if k != "http_auth_password"}


def _slot(action: str, event_object: str) -> str:
    return f"{action}.{event_object}"


def fingerprint(url: str, slot: str, user: str | None, password: str | None) -> str:
    """What a registration was made with (URL, events, version, Basic credentials), hashed:
    compared with the vault's credentials when Pipedrive's listing does not show them."""
    material = "\n".join((url, slot, VERSION, user or "", password or ""))
    return hashlib.sha256(material.encode()).hexdigest()


def _defects(
    webhook: dict[str, Any],
    slot: str,
    user: str | None,
    password: str | None,
    registered: dict[str, Any] | None,
) -> list[str]:
    """Why `webhook` cannot deliver the `slot` events the receiver accepts (empty when it can).

    Pipedrive's listing may answer `http_auth_user`/`http_auth_password` as null (its own
    example does): then the fingerprint kept at registration vouches for the credentials.
    """
    defects = []
    if str(webhook.get("version")) != VERSION:
        defects.append(f"version {webhook.get('version')!r} instead of {VERSION}")
    if _slot(str(webhook.get("event_action")), str(webhook.get("event_object"))) != slot:
        defects.append(
            f"subscribes to {webhook.get('event_action')}.{webhook.get('event_object')} "
            f"instead of {slot}"
        )
    if "is_active" in webhook and not webhook.get("is_active"):
        defects.append("inactive (banned or removed by Pipedrive)")
    if user is None or password is None:
        defects.append("no Basic credentials in the vault")
        return defects
    shown_user, shown_password = webhook.get("http_auth_user"), webhook.get("http_auth_password")
    if shown_user is not None and shown_user != user:
        defects.append("Basic user differs from the vault")
    if shown_password is not None and shown_password != password:
        defects.append("Basic password differs from the vault")
    if shown_user is None or shown_password is None:
        vouched = (
            registered is not None
            and registered.get("id") == webhook.get("id")
            and registered.get("fingerprint")
            == fingerprint(str(webhook.get("subscription_url")), slot, user, password)
        )
        if not vouched:
            defects.append(
                "Pipedrive does not show its Basic credentials and this connector did not "
                "register it with the vault's"
            )
    return defects


def webhooks_for(runtime: Runtime, tenant_id: str) -> list[dict[str, Any]]:
    """The Pipedrive webhooks pointing at the tenant's subscription URL (passwords removed)."""
    url = _subscription_url(runtime, tenant_id)
    listing = runtime.pipedrive_client(tenant_id).list_webhooks()
    return [_public(w) for w in listing if w.get("subscription_url") == url]


def ensure_webhook(runtime: Runtime, tenant_id: str) -> WebhookStatus:
    """Register the tenant's webhooks (deal changes, deal and organization deletes), or
    repair them when missing, stale or banned; a healthy one is left alone.

    Basic credentials are generated and stored in the vault before Pipedrive sees them, so
    the receiver can authenticate the very first delivery. A faulty webhook is deleted only
    after its replacement exists, so no event falls in a gap. What was registered (id, URL,
    a fingerprint of events and credentials) is kept in the tenant state.
    """
    tenant = runtime.tenant(tenant_id)
    url = _subscription_url(runtime, tenant_id)
    client = runtime.pipedrive_client(tenant_id)
    vault = runtime.vault
    tenant_state = DatabaseTenantState(runtime.database)
    registered: dict[str, Any] = dict(
        (tenant_state.get(tenant_id, STATE_KEY) or {}).get("webhooks") or {}
    )
    user = vault.get_optional(tenant_id, "webhook", "basic_user")
    password = vault.get_optional(tenant_id, "webhook", "basic_password")
    ours = [w for w in client.list_webhooks() if w.get("subscription_url") == url]
    status = WebhookStatus(tenant=tenant_id, subscription_url=url, action="ok")
    if tenant.webhook.auth == "hmac":
        status.problems.append(
            "webhook.auth is 'hmac' but Pipedrive cannot sign: its deliveries will be refused "
            "(use 'basic' or 'both' with a signing proxy)"
        )
    kept: dict[str, dict[str, Any]] = {}
    for action, event_object in SUBSCRIPTIONS:
        slot = _slot(action, event_object)
        healthy = [w for w in ours if not _defects(w, slot, user, password, registered.get(slot))]
        if healthy:
            kept[slot] = healthy[0]
            # Healthy means its credentials are the vault's: vouch for them from now on.
            registered[slot] = {
                "id": int(healthy[0]["id"]),
                "fingerprint": fingerprint(url, slot, user, password),
            }
    missing = [s for s in SUBSCRIPTIONS if _slot(*s) not in kept]
    if missing:
        for webhook in ours:
            if webhook in kept.values():
                continue
            slot = _slot(str(webhook.get("event_action")), str(webhook.get("event_object")))
            problems = _defects(webhook, slot, user, password, registered.get(slot))
            status.problems.append(
                f"webhook {webhook.get('id')} ({slot}): "
                + ("; ".join(problems) or "not one the connector needs")
            )
        if user is None or password is None:
            user = user or f"mlc-{tenant_id}"
            password = secrets.token_urlsafe(32)
            vault.set(tenant_id, "webhook", "basic_user", user)
            vault.set(tenant_id, "webhook", "basic_password", password)
        for action, event_object in missing:
            slot = _slot(action, event_object)
            created = client.create_webhook(
                url, action, event_object, user, password, version=VERSION
            )
            kept[slot] = created
            registered[slot] = {
                "id": int(created["id"]),
                "fingerprint": fingerprint(url, slot, user, password),
            }
        status.action = "repaired" if ours else "created"
    keep_ids = {int(webhook["id"]) for webhook in kept.values()}
    for webhook in ours:
        if int(webhook["id"]) not in keep_ids:
            client.delete_webhook(int(webhook["id"]))
            status.removed.append(int(webhook["id"]))
            status.action = "repaired"
    status.webhook_ids = {slot: int(webhook["id"]) for slot, webhook in kept.items()}
    status.webhook_id = status.webhook_ids[PRIMARY]
    tenant_state.put(
        tenant_id,
        STATE_KEY,
        {
            "webhook_id": status.webhook_id,
            "subscription_url": url,
            "webhooks": {slot: registered[slot] for slot in kept if slot in registered},
        },
    )
    status.webhooks = [_public(webhook) for webhook in kept.values()]
    return status


def _subscription_url(runtime: Runtime, tenant_id: str) -> str:
    url = runtime.tenant(tenant_id).webhook.subscription_url
    if not url:
        raise ConfigError(
            f"tenant {tenant_id!r}: webhook.subscription_url is not set (the public URL "
            f"Pipedrive posts to, ending in /webhooks/pipedrive/{tenant_id})"
        )
    return url
