"""Who the operator is: password users from settings or a trusted proxy header; CSRF tokens.

The CSRF check is our own ten lines rather than Flask-WTF: the console has no forms library
to integrate with, and a per-session random token compared in constant time, with a
SameSite=Strict session cookie, is the whole of what it needs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from flask import abort, request, session
from werkzeug.security import check_password_hash

from connector.errors import ConfigError

SESSION_USER = "user"
SESSION_CSRF = "csrf"
CSRF_FIELD = "csrf_token"
# Checked when a name is unknown too, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = "pbkdf2:sha256:600000$mlc$" + "0" * 64


@dataclass(frozen=True)
class Authenticator:
    """Password hashes by user name, and the proxy header trusted to name the user."""

    users: dict[str, str]
    trusted_header: str | None = None

    @classmethod
    def from_settings(cls, users: str, trusted_header: str | None) -> Authenticator:
        """Parse CONNECTOR_CONSOLE_USERS (`name:hash,name:hash`); a clear error when bad."""
        parsed: dict[str, str] = {}
        for entry in (part.strip() for part in users.split(",")):
            if not entry:
                continue
            name, _, password_hash = entry.partition(":")
            if not name or "$" not in password_hash:
                raise ConfigError(
                    "CONNECTOR_CONSOLE_USERS: expected `name:<password hash>` entries separated "
                    "by commas (make a hash with `ml-connector console hash-password`)"
                )
            parsed[name] = password_hash
        header = (trusted_header or "").strip() or None
        if not parsed and header is None:
            raise ConfigError(
                "the console needs CONNECTOR_CONSOLE_USERS or CONNECTOR_CONSOLE_TRUSTED_HEADER: "
                "it never runs without authentication"
            )
        return cls(parsed, header)

    def check_password(self, name: str, password: str) -> bool:
        stored = self.users.get(name)
        matches = check_password_hash(stored or _DUMMY_HASH, password)
        return stored is not None and matches

    def current_user(self) -> str | None:
        """The proxy's header when trusted and present, else the signed-in session's user."""
        if self.trusted_header:
            named = request.headers.get(self.trusted_header, "").strip()
            if named:
                return named[:128]
        user = session.get(SESSION_USER)
        return str(user) if user else None


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get(SESSION_CSRF)
    if not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return str(token)


def require_csrf() -> None:
    """Refuse (403) a POST whose form token does not match the session's."""
    expected = session.get(SESSION_CSRF)
    given = request.form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(str(expected), given):
        abort(403, description="missing or wrong CSRF token: reload the page and try again")


def session_key(explicit: str | None, encryption_keys: list[str]) -> str:
    """The cookie-signing key: the explicit setting, else one derived from the newest
    encryption key (so every console process agrees without another secret), else random
    for this process only (sessions then end with it)."""
    if explicit:
        return explicit
    if encryption_keys:
        return hmac.new(
            encryption_keys[0].encode(), b"ml-connector console session", hashlib.sha256
        ).hexdigest()
    return secrets.token_hex(32)
