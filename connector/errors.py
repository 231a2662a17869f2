"""The connector's error types: configuration, remote systems, and records."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """Bad process settings or tenants file; the message names what and where."""


class UnknownTenantError(ConfigError):
    """A tenant id that the tenants file does not define."""

    def __init__(self, tenant: str, known: list[str]) -> None:
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown tenant {tenant!r} (tenants file defines: {listing})")
        self.tenant = tenant


class VaultError(ConnectorError):
    """A secret cannot be stored or read: missing key, wrong key, tampered ciphertext."""


class MissingCredentialError(VaultError):
    """A tenant has no stored secret of the kind an operation needs."""

    def __init__(self, tenant: str, system: str, name: str) -> None:
        super().__init__(
            f"tenant {tenant!r} has no {system} credential {name!r}; store it with "
            f"`ml-connector credentials set {tenant} {system} {name}`"
        )
        self.tenant, self.system, self.name = tenant, system, name


class RemoteError(ConnectorError):
    """A remote system (IFS or Pipedrive) answered with an error or could not be reached.

    `retryable` says whether the retry policy may try again (429, 5xx, connection errors).
    """

    def __init__(
        self,
        system: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        prefix = f"{system} HTTP {status}" if status is not None else system
        super().__init__(f"{prefix}: {message}")
        self.system = system
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


class PreconditionFailed(RemoteError):
    """IFS refused a write because the ETag in If-Match is stale (HTTP 412)."""


class RecordError(ConnectorError):
    """A source record cannot be mapped (missing or malformed required fields)."""
