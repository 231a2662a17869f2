"""The receiver's webhook credentials: decrypted once, kept briefly, dropped when they change.

Reading and decrypting a tenant's Basic pair and HMAC secret on every delivery cost the
receiver 38 % of its time. A process keeps them for `ttl_s` seconds instead, and at once
forgets a tenant's whenever its credential version stamp (connector.storage.vault.
credential_versions, re-read by the live configuration every few seconds) moves: a
`credentials set` or `delete` is live within the live-config interval, with no restart.
`keys rotate` changes no plaintext (so the stamp keeps), and the TTL makes every process
decrypt with its current keys again within `ttl_s`: one that lacks the new key then
answers 503 as before instead of serving from memory indefinitely.

For a tenant id nobody configured, `dummy` stands in: random secrets of the same kind, so
refusing an unknown tenant runs the very same checks as refusing a wrong password.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from connector.storage.vault import Vault

DEFAULT_TTL_S = 30.0
SYSTEM = "webhook"

VersionOf = Callable[[str], str | None]  # a tenant's credential version stamp, if known


@dataclass(frozen=True)
class WebhookSecrets:
    """What a delivery of one tenant is checked against; None: not stored."""

    basic_user: str | None
    basic_password: str | None
    hmac_secret: str | None


@dataclass(frozen=True)
class _Entry:
    secrets: WebhookSecrets
    version: str | None
    read_at: float


def _no_version(_tenant_id: str) -> str | None:
    return None


class WebhookCredentialCache:
    """Per-process cache of decrypted webhook secrets, keyed by tenant."""

    def __init__(
        self,
        vault: Vault,
        *,
        version_of: VersionOf = _no_version,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vault = vault
        self.version_of = version_of
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        # The same kind of values a tenant has, fresh per process: nothing to guess or match.
        self.dummy = WebhookSecrets(
            basic_user=secrets.token_urlsafe(12),
            basic_password=secrets.token_urlsafe(32),
            hmac_secret=secrets.token_urlsafe(32),
        )
        self.reads = 0  # vault reads so far (each is one tenant's three secrets)

    def get(self, tenant_id: str) -> WebhookSecrets:
        """The tenant's secrets, from memory while fresh; VaultError (e.g. a key this process
        lacks) and database errors pass through and are not remembered."""
        version = self.version_of(tenant_id)
        entry = self._entries.get(tenant_id)
        now = self._clock()
        if entry is not None and entry.version == version and now - entry.read_at < self.ttl_s:
            return entry.secrets
        found = WebhookSecrets(
            basic_user=self.vault.get_optional(tenant_id, SYSTEM, "basic_user"),
            basic_password=self.vault.get_optional(tenant_id, SYSTEM, "basic_password"),
            hmac_secret=self.vault.get_optional(tenant_id, SYSTEM, "hmac_secret"),
        )
        with self._lock:
            self.reads += 1
            self._entries[tenant_id] = _Entry(found, version, now)
        return found

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop one tenant's secrets, or everyone's."""
        with self._lock:
            if tenant_id is None:
                self._entries.clear()
            else:
                self._entries.pop(tenant_id, None)
