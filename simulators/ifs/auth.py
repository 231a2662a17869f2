"""Keycloak-style access tokens: HS256-signed JWTs carrying the client id and expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: bytes, issuer: str, client_id: str, scope: str, now: float, ttl: float) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "exp": now + ttl,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "typ": "Bearer",
        "azp": client_id,
        "clientId": client_id,
        "scope": scope,
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def verify_token(key: bytes, issuer: str, token: str, now: float) -> dict[str, Any] | None:
    """The token's claims when it is ours, for this realm, and not expired; else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    signing_input = f"{parts[0]}.{parts[1]}"
    expected = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims: dict[str, Any] = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return None
    if claims.get("iss") != issuer or float(claims.get("exp", 0)) <= now:
        return None
    return claims
