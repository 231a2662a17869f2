"""Webhook authentication: HTTP Basic and HMAC-SHA256 over the raw body, in constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from hmac import compare_digest

SIGNATURE_PREFIX = "sha256="


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic …` header, or None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    if not separator:
        return None
    return user, password


def verify_basic(authorization: str | None, expected_user: str, expected_password: str) -> bool:
    """True when the header carries exactly the expected user and password."""
    given = parse_basic(authorization)
    if given is None:
        return False
    # Both comparisons always run so that the timing does not tell which half was wrong.
    user_ok = compare_digest(given[0].encode(), expected_user.encode())
    password_ok = compare_digest(given[1].encode(), expected_password.encode())
    return user_ok and password_ok


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `body` under `secret` (what a signing sender puts in the header)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_hmac(signature: str | None, body: bytes, secret: str) -> bool:
    """True when `signature` (hex, optionally prefixed "sha256=") signs `body` under `secret`."""
    if not signature or not secret:
        return False
    value = signature.strip()
    if value[: len(SIGNATURE_PREFIX)].lower() == SIGNATURE_PREFIX:
        value = value[len(SIGNATURE_PREFIX) :]
    return compare_digest(value.lower().encode(), sign(secret, body).encode())
