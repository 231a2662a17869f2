"""Which errors are worth another attempt: remote, limiter and lost infrastructure connections."""

from __future__ import annotations

import pytest
import redis.exceptions
import sqlalchemy.exc

from connector.errors import (
    BrokerUnavailableError,
    RecordError,
    RemoteError,
    TransientError,
    is_connection_loss,
    is_transient,
    summary,
)


def _operational(message: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize(
    "error",
    [
        _operational("server closed the connection unexpectedly"),
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokerUnavailableError("cannot queue ml_connector.sync_order: the broker …"),
    ],
    ids=[
        "pg-closed",
        "pg-interface",
        "pool-timeout",
        "redis-down",
        "redis-timeout",
        "reset",
        "broker",
    ],
)
def test_lost_infrastructure_connections_are_transient(error: Exception) -> None:
    assert is_transient(error)


def test_a_wrapper_is_judged_by_what_it_was_raised_from() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("Connection refused")
        except redis.exceptions.ConnectionError as cause:
            raise RuntimeError("lock not released") from cause
    except RuntimeError as wrapper:
        assert is_connection_loss(wrapper)


@pytest.mark.parametrize(
    "error",
    [
        RecordError("order C1 has no CurrencyCode"),
        RemoteError("pipedrive", "Currency EURO unknown", status=400),
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        ValueError("bad"),
    ],
    ids=["record", "remote-400", "integrity", "bug"],
)
def test_errors_about_the_record_or_the_code_are_final(error: Exception) -> None:
    assert not is_transient(error)


def test_limiter_and_remote_hints_stay_transient() -> None:
    assert is_transient(TransientError("rate limit", 1.0))
    assert is_transient(RemoteError("ifs", "busy", status=503, retryable=True))


def test_a_database_error_about_the_schema_is_final_and_a_busy_sqlite_file_is_not() -> None:
    import sqlite3

    missing = sqlite3.OperationalError("no such table: audit_log")
    locked = sqlite3.OperationalError("database is locked")
    assert not is_transient(sqlalchemy.exc.OperationalError("SELECT", {}, missing))
    assert is_transient(sqlalchemy.exc.OperationalError("SELECT", {}, locked))


class _PgError(Exception):
    def __init__(self, pgcode: str | None) -> None:
        super().__init__(f"SQLSTATE {pgcode}")
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("pgcode", "transient"),
    [("57P01", True), ("08006", True), ("40P01", True), ("53300", True), ("42P01", False)],
    ids=["admin-shutdown", "connection-failure", "deadlock", "too-many-connections", "no-table"],
)
def test_postgres_errors_are_judged_by_their_sqlstate(pgcode: str, transient: bool) -> None:
    error = sqlalchemy.exc.OperationalError("SELECT 1", {}, _PgError(pgcode))
    assert is_transient(error) is transient


def test_summary_is_the_type_and_the_first_line_of_the_message() -> None:
    error = ConnectionError("could not connect to server\nIs the server running on 127.0.0.1?")
    assert summary(error) == "ConnectionError: could not connect to server"
    assert summary(TimeoutError()) == "TimeoutError: "
