"""Basic and HMAC verification: exact matches pass, anything else fails."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from connector.webhooks.auth import parse_basic, sign, verify_basic, verify_hmac


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_accepts_exactly_the_expected_pair():
    assert verify_basic(header("hook", "pw:with:colons"), "hook", "pw:with:colons")
    assert parse_basic(header("hook", "pw:with:colons")) == ("hook", "pw:with:colons")


@pytest.mark.parametrize(
    "value",
    [
        header("hook", "pw2"),
        header("Hook", "pw"),
        header("hook", ""),
        "Basic",
        "Basic ====",
        "Bearer " + base64.b64encode(b"hook:pw").decode(),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "",
        None,
    ],
)
def test_basic_refuses_anything_else(value):
    assert not verify_basic(value, "hook", "pw")


def test_hmac_is_hex_sha256_of_the_raw_body():
    body = b'{"meta":{"id":"x"}}'
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()

    assert sign("secret", body) == expected
    assert verify_hmac(expected, body, "secret")
    assert verify_hmac("sha256=" + expected, body, "secret")
    assert verify_hmac("SHA256=" + expected.upper(), body, "secret")


@pytest.mark.parametrize(
    ("signature", "body", "secret"),
    [
        (sign("secret", b"a"), b"b", "secret"),
        (sign("other", b"a"), b"a", "secret"),
        ("", b"a", "secret"),
        (None, b"a", "secret"),
        (sign("", b"a"), b"a", ""),
        ("sha256=", b"a", "secret"),
        ("é" * 64, b"a", "secret"),
    ],
)
def test_hmac_refuses_wrong_or_missing_signatures(signature, body, secret):
    assert not verify_hmac(signature, body, secret)
