"""IFS Cloud OAuth2 client-credentials tokens: fetched once, shared by threads, renewed early."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from connector.errors import RemoteError
from connector.http import RemoteSession, RetryPolicy, json_body

# IFS tokens live about 180 s; renewing 30 s early (at most 20% of the lifetime early for short
# lifetimes) keeps requests from racing an expiring token.
RENEW_MARGIN_S = 30.0
RENEW_MARGIN_FRACTION = 0.2


@dataclass(frozen=True)
class _Token:
    value: str
    fetched_at: float
    renew_at: float


class IfsTokenProvider(requests.auth.AuthBase):
    """Bearer tokens for one IFS client; also the `auth` of the projection session."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "openid microprofile-jwt",
        session: requests.Session | None = None,
        policy: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._http = RemoteSession(
            "ifs", token_url, policy=policy or RetryPolicy(), timeout_s=timeout_s, session=session
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        # The token each thread last sent, so a 401 renews only the token that was refused.
        self._sent = threading.local()
        self.tokens_fetched = 0

    def __repr__(self) -> str:  # never show the secret
        return f"IfsTokenProvider({self.token_url!r}, client_id={self.client_id!r})"

    def token(self) -> str:
        """A valid access token, fetched when there is none or the current one is due."""
        current = self._token
        if current is not None and self._clock() < current.renew_at:
            return current.value
        with self._lock:
            current = self._token
            if current is None or self._clock() >= current.renew_at:
                current = self._fetch()
                self._token = current
            return current.value

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it); the next request fetches one."""
        with self._lock:
            self._token = None

    def refresh_after_unauthorized(self) -> bool:
        """The RemoteSession 401 hook: replace the refused token unless another thread did."""
        refused = getattr(self._sent, "token", None)
        with self._lock:
            current = self._token
            if current is None or current.value == refused:
                self._token = self._fetch()
            return True

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.token()
        self._sent.token = token
        request.headers["Authorization"] = f"Bearer {token}"
        return request

    def _fetch(self) -> _Token:
        started = self._clock()
        response = self._http.request(
            "POST",
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "scope": self.scope,
            },
            headers={"Accept": "application/json"},
        )
        document = json_body(response, "ifs")
        value = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(value, str) or not value:
            raise RemoteError("ifs", "token endpoint answered without an access_token")
        try:
            lifetime = float(document.get("expires_in", 180))
        except (TypeError, ValueError):
            lifetime = 180.0
        margin = min(RENEW_MARGIN_S, lifetime * RENEW_MARGIN_FRACTION)
        self.tokens_fetched += 1
        return _Token(value=value, fetched_at=started, renew_at=started + lifetime - margin)


_shared: dict[tuple[str, str, str, str], IfsTokenProvider] = {}
_shared_lock = threading.Lock()


def shared_token_provider(
    token_url: str, client_id: str, client_secret: str, *, scope: str = "openid microprofile-jwt"
) -> IfsTokenProvider:
    """The process-wide provider for these credentials, so every client of a tenant shares
    one cached token. A changed secret gets a new provider, and the providers of the old
    secret for the same client are forgotten: no token fetched with it is sent again."""
    fingerprint = hashlib.sha256(client_secret.encode("utf-8")).hexdigest()
    key = (token_url, client_id, scope, fingerprint)
    with _shared_lock:
        provider = _shared.get(key)
        if provider is None:
            for stale in [k for k in _shared if k[:3] == key[:3]]:
                del _shared[stale]
            provider = IfsTokenProvider(token_url, client_id, client_secret, scope=scope)
            _shared[key] = provider
        return provider
