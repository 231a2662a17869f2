"""Log lines carry context fields and never show a secret, in JSON or text form."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography.fernet import Fernet

from connector.logs import (
    REDACTED,
    bind_correlation_id,
    configure_logging,
    current_context,
    is_secret_key,
    log_context,
    redact_text,
    register_secret,
)


@contextmanager
def _configured(fmt: str) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    previous_level = root.level
    handler = configure_logging("DEBUG", fmt, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


@pytest.fixture(params=["json", "text"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    with _configured(request.param) as stream:
        yield request.param, stream


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    with _configured("json") as stream:
        yield stream


@pytest.fixture
def text_stream() -> Iterator[io.StringIO]:
    with _configured("text") as stream:
        yield stream


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _log_each_kind_of_secret(log: logging.Logger) -> list[str]:
    """Emit one record per kind of secret; return the secret values that must not appear."""
    api_token = _unique("pdtok")
    bearer = _unique("eyJhbGciOiJSUzI1NiJ9.")
    basic = _unique("dXNlcjpw")
    password = _unique("pw")
    client_secret = _unique("cs")
    fernet_key = Fernet.generate_key().decode()
    registered = _unique("vault-secret-")
    db_password = _unique("dbpw")
    register_secret(registered)

    log.info("calling pipedrive with headers %s", {"x-api-token": api_token, "Accept": "json"})
    log.info("raw header line x-api-token: %s", api_token)
    log.info("GET /api/v2/deals?api_token=%s&limit=500", api_token)
    log.info("auth header Authorization: Bearer %s", bearer)
    log.info("headers=%r", {"Authorization": f"Basic {basic}"})
    log.info("login", extra={"password": password, "client_secret": client_secret})
    log.info("vault keys loaded: %s", fernet_key)
    log.info("token endpoint answered %s", {"access_token": bearer, "token_type": "Bearer"})
    log.info("decrypted value %s for tenant", registered)
    log.info("connecting to postgresql://connector:%s@db:5432/connector", db_password)
    log.info("stored %(password)s for %(tenant)s", {"password": password, "tenant": "acme"})
    log.info("kwargs", extra={"encryption_keys": fernet_key, "api_key": api_token})
    try:
        raise RuntimeError(f"IFS refused client_secret={client_secret} ({registered})")
    except RuntimeError:
        log.exception("token request failed")
    return [api_token, bearer, basic, password, client_secret, fernet_key, registered, db_password]


def test_no_kind_of_secret_reaches_the_output(captured: tuple[str, io.StringIO]) -> None:
    fmt, stream = captured
    secrets = _log_each_kind_of_secret(logging.getLogger("tests.logs.secrets"))

    output = stream.getvalue()
    assert output.count("\n") >= 13
    for secret in secrets:
        assert secret not in output, f"{fmt} output leaks {secret!r}"
    assert REDACTED in output
    # What is not secret stays readable.
    assert "Accept" in output and "acme" in output and "token_type" in output


def test_caplog_sees_redacted_records_too(
    captured: tuple[str, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    # The filter rewrites the record itself, so handlers after ours get no secret either.
    token = _unique("tok")
    logging.getLogger("tests.logs.caplog").warning("x-api-token: %s", token)
    assert token not in caplog.text
    assert f"x-api-token: {REDACTED}" in caplog.text


def test_json_lines_carry_context_fields(json_stream: io.StringIO) -> None:
    stream = json_stream
    log = logging.getLogger("tests.logs.context")
    with log_context(tenant="acme", entity="order", task="sync_order"):
        correlation_id = bind_correlation_id()
        with log_context(record_key="O-1001"):
            log.info("synced %s", "O-1001")
        log.info("after inner block")
    log.info("outside")

    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "synced O-1001"
    assert first["level"] == "INFO" and first["logger"] == "tests.logs.context"
    assert "timestamp" in first
    assert {k: first[k] for k in ("tenant", "entity", "task", "record_key", "correlation_id")} == {
        "tenant": "acme",
        "entity": "order",
        "task": "sync_order",
        "record_key": "O-1001",
        "correlation_id": correlation_id,
    }
    assert "record_key" not in second and second["correlation_id"] == correlation_id
    assert "tenant" not in third and "correlation_id" not in third


def test_text_lines_show_context_fields(text_stream: io.StringIO) -> None:
    stream = text_stream
    with log_context(tenant="acme", record_key="C-7"):
        logging.getLogger("tests.logs.text").info("hello")
    line = stream.getvalue().strip()
    assert line.endswith("hello [tenant=acme record_key=C-7]")
    assert " INFO tests.logs.text " in line


def test_context_does_not_leak_between_threads() -> None:
    seen: dict[str, dict[str, object]] = {}

    def work(name: str) -> None:
        with log_context(tenant=name):
            bind_correlation_id(f"cid-{name}")
            seen[name] = current_context()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {
        "a": {"tenant": "a", "correlation_id": "cid-a"},
        "b": {"tenant": "b", "correlation_id": "cid-b"},
    }
    assert current_context() == {}


def test_numbers_keep_their_format(captured: tuple[str, io.StringIO]) -> None:
    _, stream = captured
    logging.getLogger("tests.logs.numbers").info("waited %.2f s for %d tokens", 1.5, 5)
    assert "waited 1.50 s for 5 tokens" in stream.getvalue()


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "api_token",
        "x-api-token",
        "accessToken",
        "client_secret",
        "Authorization",
        "webhook_password",
        "api_key",
        "encryption_keys",
        "CONNECTOR_ENCRYPTION_KEYS",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["token_cost", "tokens_remaining", "x-ratelimit-remaining", "tenant", "record_key"]
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_key(name)


def test_rate_limit_figures_stay_visible() -> None:
    text = "x-token-cost: 20 tokens_remaining=7 x-ratelimit-remaining: 3"
    assert redact_text(text) == text


def test_short_registered_values_are_ignored() -> None:
    register_secret("ab")
    assert redact_text("ab cab") == "ab cab"


def test_configure_logging_replaces_its_previous_handler() -> None:
    root = logging.getLogger()
    first = configure_logging("INFO", "json", stream=io.StringIO())
    second = configure_logging("INFO", "text", stream=io.StringIO())
    try:
        assert first not in root.handlers and second in root.handlers
    finally:
        root.removeHandler(second)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        configure_logging("INFO", "xml")
