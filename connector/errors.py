"""The connector's error types: configuration, remote systems, and records."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy.exc


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
    """Worth another attempt later: a TransientError, a remote's retryable error (429, 5xx,
    connection), or a lost connection to our own infrastructure (`is_connection_loss`).
    Everything else is final until replayed."""
    if isinstance(error, RemoteError):
        return error.retryable
    return isinstance(error, TransientError | BrokerUnavailableError) or is_connection_loss(error)


def summary(error: BaseException) -> str:
    """`error` in one line for a log line repeated during an outage: its type and the first
    line of its message (a driver's message goes on with the failed SQL or a hint)."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def is_connection_loss(error: BaseException) -> bool:
    """The database, Redis or the broker could not be reached or dropped the connection.

    Such an error says nothing about the record: the same attempt succeeds once the service
    is back, so it is retried, never recorded as the record's failure (measured: a 30 s
    Postgres outage killed 1,052 tasks with OperationalError and left no audit row).
    A wrapper is judged by what it was raised `from`.
    """
    import redis.exceptions
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if _database_unreachable(current):
                return True
        elif isinstance(
            current,
            # DisconnectionError: the pool found a dead connection; TimeoutError: no pooled
            # connection came free in time.
            sqlalchemy.exc.DisconnectionError
            | sqlalchemy.exc.TimeoutError
            | redis.exceptions.ConnectionError
            | redis.exceptions.TimeoutError
            # A socket that a broker client (or anything else) lost: refused, reset, timed out.
            | ConnectionError
            | TimeoutError,
        ):
            return True
        current = current.__cause__
    return False


# SQLSTATE classes a retry outlives: 08 connection exception, 40 transaction rollback
# (deadlock, serialization failure), 53 insufficient resources (too many connections),
# 57 operator intervention (the server shutting down or starting).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


def _database_unreachable(error: sqlalchemy.exc.DBAPIError) -> bool:
    import sqlalchemy.exc

    if error.connection_invalidated or isinstance(error, sqlalchemy.exc.InterfaceError):
        return True  # psycopg2's "connection already closed" is an InterfaceError
    if not isinstance(error, sqlalchemy.exc.OperationalError):
        return False  # integrity, data, programming errors: about the statement, not the link
    driver_error = error.orig
    code = getattr(driver_error, "pgcode", None)
    if code:
        return str(code)[:2] in _TRANSIENT_SQLSTATE_CLASSES
    if type(driver_error).__module__.startswith("sqlite3"):
        # SQLite's OperationalError also means "no such table": only a busy file is transient.
        return "locked" in str(driver_error) or "busy" in str(driver_error)
    # psycopg2 raises connection failures (refused, server closed the connection) without a
    # SQLSTATE.
    return True


def retry_after_s(error: BaseException) -> float | None:
    """The earliest retry the error asks for, if it says."""
    hint = getattr(error, "retry_after_s", None)
    return float(hint) if isinstance(hint, int | float) else None
