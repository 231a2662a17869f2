"""The connector's error types: configuration, remote systems, and records."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """Bad process settings or tenants file; the message names what and where."""


class BrokerUnavailableError(ConnectorError):
    """The task broker (CONNECTOR_BROKER_URL) cannot be reached, so nothing can be queued."""


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


class TransientError(ConnectorError):
    """Worth another attempt later: rate tokens or a record lock not had in time, a remote's
    429/5xx/connection error. `retry_after_s` is the earliest sensible retry (None: no hint);
    `audit_id` is the "retrying" audit row the attempt left, if it left one.

    The library raises it; the task layer alone decides whether and when to retry, and
    marks that row failed once no retry is left.
    """

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, audit_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.audit_id = audit_id


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
        retry_after_s: float | None = None,
        body: str | None = None,
    ) -> None:
        prefix = f"{system} HTTP {status}" if status is not None else system
        super().__init__(f"{prefix}: {message}")
        self.system = system
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.body = body


class PreconditionFailed(RemoteError):
    """IFS refused a write because the ETag in If-Match is stale (HTTP 412)."""


class RecordError(ConnectorError):
    """A source record cannot be mapped (missing or malformed required fields)."""


def is_transient(error: BaseException) -> bool:
    """Worth another attempt later: a TransientError, or a remote's retryable error (429, 5xx,
    connection). Everything else is final until replayed."""
    if isinstance(error, RemoteError):
        return error.retryable
    return isinstance(error, TransientError)


def retry_after_s(error: BaseException) -> float | None:
    """The earliest retry the error asks for, if it says."""
    hint = getattr(error, "retry_after_s", None)
    return float(hint) if isinstance(hint, int | float) else None
