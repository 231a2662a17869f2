"""The credentials vault: tenant secrets encrypted at rest with rotatable Fernet keys."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, func, select, update

from connector.errors import MissingCredentialError, VaultError
from connector.logs import register_secret
from connector.storage.database import Database
from connector.storage.models import Credential, utcnow
from connector.storage.upsert import upsert

if TYPE_CHECKING:
    from connector.tenants import TenantConfig

SYSTEMS = ("ifs", "pipedrive", "webhook")

# The secrets the connector reads, per system. The vault stores any well-formed name
# (the CLI warns about others) so that a new client needs no vault change.
KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "ifs": ("client_secret",),
    "pipedrive": (
        "api_token",
        "oauth_client_secret",
        "oauth_refresh_token",
        # Written by connector.pipedrive.auth itself as it refreshes the grant.
        "oauth_access_token",
        "oauth_access_expires_at",
        "oauth_api_domain",
        "oauth_scope",
    ),
    "webhook": ("basic_user", "basic_password", "hmac_secret"),
}

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
NO_KEY = (
    "no encryption key: set CONNECTOR_ENCRYPTION_KEYS "
    "(generate one with `ml-connector keys generate`)"
)


def required_credentials(tenant: TenantConfig) -> list[tuple[str, str]]:
    """(system, name) of every secret `tenant`'s configuration needs at run time."""
    needed = [("ifs", "client_secret")]
    if tenant.pipedrive.auth == "api_token":
        needed.append(("pipedrive", "api_token"))
    else:
        needed += [("pipedrive", "oauth_client_secret"), ("pipedrive", "oauth_refresh_token")]
    if tenant.webhook.auth in ("basic", "both"):
        needed += [("webhook", "basic_user"), ("webhook", "basic_password")]
    if tenant.webhook.auth in ("hmac", "both"):
        needed.append(("webhook", "hmac_secret"))
    return needed


def parse_keys(keys: Sequence[str]) -> MultiFernet:
    """A MultiFernet over `keys` (newest first); VaultError names a bad key by position only."""
    cleaned = [key.strip() for key in keys if key.strip()]
    if not cleaned:
        raise VaultError(NO_KEY)
    fernets = []
    for position, key in enumerate(cleaned, start=1):
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, TypeError, binascii.Error, UnicodeEncodeError):
            # `from None`: the original exception could carry the key material.
            raise VaultError(
                f"CONNECTOR_ENCRYPTION_KEYS: key {position} of {len(cleaned)} is not a Fernet key "
                "(expected 32 url-safe base64-encoded bytes; generate one with "
                "`ml-connector keys generate`)"
            ) from None
    return MultiFernet(fernets)


def credential_versions(database: Database) -> dict[str, str]:
    """A version stamp per tenant that changes whenever one of its secrets is set or deleted.

    One grouped query over the credentials table, cheap enough for every process to run every
    few seconds: the count catches a delete, the newest `updated_at` catches a set (a rotation
    keeps `updated_at`, as it changes no secret). Derived from the rows themselves, so every
    writer (CLI, OAuth refresh, tests) bumps it without having to remember to.
    """
    query = select(Credential.tenant, func.count(), func.max(Credential.updated_at)).group_by(
        Credential.tenant
    )
    with database.session() as session:
        return {
            tenant: f"{count}:{newest.isoformat() if newest else ''}"
            for tenant, count, newest in session.execute(query)
        }


def check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise VaultError(
            f"unknown credential system {system!r}: expected one of {', '.join(SYSTEMS)}"
        )


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise VaultError(
            f"invalid credential name {name!r}: expected lowercase letters, digits and "
            "underscores, starting with a letter, at most 64 characters"
        )


class Vault:
    """Stores, reads and rotates tenant secrets in the credentials table.

    Each plaintext is sealed together with its (tenant, system, name), so a ciphertext
    copied onto another row is refused like any other tampering.
    Keys are checked when first needed: listing names works without any key.
    """

    def __init__(self, database: Database, keys: list[str]) -> None:
        self.database = database
        self._keys = list(keys)
        self._fernet: MultiFernet | None = None

    @property
    def fernet(self) -> MultiFernet:
        if self._fernet is None:
            self._fernet = parse_keys(self._keys)
        return self._fernet

    def check_keys(self) -> None:
        """Raise VaultError now if the keys are missing or malformed (before asking for input)."""
        self._fernet = self.fernet

    def _seal(self, tenant: str, system: str, name: str, value: str) -> bytes:
        envelope = {"tenant": tenant, "system": system, "name": name, "value": value}
        return self.fernet.encrypt(json.dumps(envelope).encode("utf-8"))

    def _open(self, tenant: str, system: str, name: str, ciphertext: bytes) -> str:
        what = f"cannot decrypt {system} credential {name!r} of tenant {tenant!r}"
        try:
            plaintext = self.fernet.decrypt(bytes(ciphertext))
        except InvalidToken:
            raise VaultError(f"{what}: wrong CONNECTOR_ENCRYPTION_KEYS or tampered data") from None
        try:
            envelope = json.loads(plaintext)
            sealed_for = (envelope["tenant"], envelope["system"], envelope["name"])
        except (ValueError, TypeError, KeyError):
            raise VaultError(f"{what}: tampered data (not a vault envelope)") from None
        if sealed_for != (tenant, system, name):
            raise VaultError(f"{what}: tampered data (the ciphertext belongs to another row)")
        value = str(envelope["value"])
        # From now on this process redacts the secret wherever it would be logged.
        register_secret(value)
        return value

    def set(self, tenant: str, system: str, name: str, value: str) -> None:
        """Store (or replace) one secret."""
        register_secret(value)
        check_system(system)
        _check_name(name)
        if not value:
            raise VaultError(f"refusing to store an empty {system} credential {name!r}")
        ciphertext = self._seal(tenant, system, name, value)
        now = utcnow()
        with self.database.session() as session:
            upsert(
                session,
                Credential,
                {
                    "tenant": tenant,
                    "system": system,
                    "name": name,
                    "ciphertext": ciphertext,
                    "created_at": now,
                    "updated_at": now,
                },
                key=("tenant", "system", "name"),
                update=("ciphertext", "updated_at"),
            )

    def get_optional(self, tenant: str, system: str, name: str) -> str | None:
        """The secret, or None when none is stored."""
        check_system(system)
        with self.database.session() as session:
            ciphertext = session.scalar(
                select(Credential.ciphertext).where(
                    Credential.tenant == tenant,
                    Credential.system == system,
                    Credential.name == name,
                )
            )
        if ciphertext is None:
            return None
        return self._open(tenant, system, name, ciphertext)

    def get(self, tenant: str, system: str, name: str) -> str:
        """The secret; MissingCredentialError (with the command to store it) when absent."""
        value = self.get_optional(tenant, system, name)
        if value is None:
            raise MissingCredentialError(tenant, system, name)
        return value

    def delete(self, tenant: str, system: str, name: str) -> bool:
        """Remove one secret; True when there was one."""
        check_system(system)
        with self.database.session() as session:
            result = session.execute(
                delete(Credential).where(
                    Credential.tenant == tenant,
                    Credential.system == system,
                    Credential.name == name,
                )
            )
        return bool(getattr(result, "rowcount", 0))

    def names(self, tenant: str | None = None) -> list[tuple[str, str, str, datetime]]:
        """(tenant, system, name, updated_at) of stored secrets, never their values."""
        query = select(
            Credential.tenant, Credential.system, Credential.name, Credential.updated_at
        ).order_by(Credential.tenant, Credential.system, Credential.name)
        if tenant is not None:
            query = query.where(Credential.tenant == tenant)
        with self.database.session() as session:
            return [(row[0], row[1], row[2], row[3]) for row in session.execute(query)]

    def rotate(self) -> int:
        """Re-encrypt every secret with the newest key, all or nothing; returns the count.

        Afterwards the older keys can be removed from CONNECTOR_ENCRYPTION_KEYS.
        """
        fernet = self.fernet
        with self.database.session() as session:
            rows = session.execute(
                select(
                    Credential.id,
                    Credential.tenant,
                    Credential.system,
                    Credential.name,
                    Credential.ciphertext,
                )
                .order_by(Credential.id)
                .with_for_update()
            ).all()
            for row_id, tenant, system, name, ciphertext in rows:
                try:
                    rotated = fernet.rotate(bytes(ciphertext))
                except InvalidToken:
                    # Raising rolls the whole transaction back: no row changes.
                    raise VaultError(
                        f"cannot decrypt {system} credential {name!r} of tenant {tenant!r}: "
                        "wrong CONNECTOR_ENCRYPTION_KEYS or tampered data; nothing was rotated"
                    ) from None
                # A rotation does not change the secret: updated_at keeps the time it was set.
                session.execute(
                    update(Credential)
                    .where(Credential.id == row_id)
                    .values(ciphertext=rotated, updated_at=Credential.updated_at)
                )
            return len(rows)
