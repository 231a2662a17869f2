"""The one HTTP retry policy for both remotes: rate-limit tokens, jittered backoff, errors."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import backoff
import requests

from connector.errors import PreconditionFailed, RemoteError

log = logging.getLogger(__name__)

Acquire = Callable[[str, int], None]
"""(bucket, cost): blocks briefly for rate-limit tokens, or raises RateLimited."""

ResponseHook = Callable[[requests.Response], float | None]
"""Told about every response of one remote before it is judged (what the remote says about its
limits); a number it returns is a pause the remote imposed on all of our work: the error answer
is raised at once as retryable with that wait, not retried here."""

Observer = Callable[[str, str, int | None, float], None]
"""(system, method, status or None for a transport error, seconds) after every attempt."""

_observers: list[Observer] = []
_observers_lock = threading.Lock()

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def add_observer(observer: Observer) -> None:
    """Register a callable told about every HTTP attempt (metrics); kept dependency-free."""
    with _observers_lock:
        if observer not in _observers:
            _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    with _observers_lock:
        if observer in _observers:
            _observers.remove(observer)


def _notify(system: str, method: str, status: int | None, seconds: float) -> None:
    for observer in list(_observers):
        try:
            observer(system, method, status, seconds)
        except Exception:  # a broken metrics hook must never break a sync
            log.exception("HTTP observer %r failed", observer)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a retryable failure (429, 5xx, connection errors).

    The one policy: RemoteSession retries requests with it, and the task layer retries
    whole tasks with it (other numbers, same formula).
    """

    max_tries: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_time_s: float = 120.0

    def delay_s(self, retry: int, minimum_s: float | None = None) -> float:
        """The wait before retry number `retry` (0 = the first): full-jitter exponential,
        uniform(0, min(cap, base * 2**retry)), and never less than `minimum_s` (the remote's
        or the limiter's own hint)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))
        return max(backoff.full_jitter(ceiling), minimum_s or 0.0)


def retry_after_seconds(
    response: requests.Response, *, now: datetime | None = None
) -> float | None:
    """The minimum wait a 429/503 asks for: Retry-After (seconds or HTTP date) or x-ratelimit-reset.

    Pipedrive's x-ratelimit-reset is the number of seconds until the window resets.
    """
    hints: list[float] = []
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        retry_after = retry_after.strip()
        try:
            hints.append(float(retry_after))
        except ValueError:
            try:
                when = parsedate_to_datetime(retry_after)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                hints.append((when - (now or datetime.now(UTC))).total_seconds())
    reset = response.headers.get("x-ratelimit-reset")
    if reset:
        with contextlib.suppress(ValueError):
            hints.append(float(reset))
    if not hints:
        return None
    return max(0.0, max(hints))


def remote_error_text(response: requests.Response, *, limit: int = 500) -> str:
    """The remote's own words about an error: IFS `{"error":{"code","message"}}`, Pipedrive
    `{"error": "...", "error_info": "..."}`, else the start of the body."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            details = error.get("details")
            text = ": ".join(str(part) for part in (code, message) if part)
            if isinstance(details, list) and details:
                inner = "; ".join(
                    str(d.get("message"))
                    for d in details
                    if isinstance(d, dict) and d.get("message")
                )
                if inner:
                    text = f"{text} ({inner})"
            if text:
                return text[:limit]
        if isinstance(error, str) and error:
            # Pipedrive adds error_info; OAuth2 token endpoints add error_description.
            info = document.get("error_info") or document.get("error_description")
            text = f"{error} ({info})" if info else error
            return text[:limit]
        if document.get("message"):
            return str(document["message"])[:limit]
    body = (response.text or "").strip()
    return body[:limit] if body else (response.reason or f"HTTP {response.status_code}")


class _Retryable(Exception):
    """An attempt failed in a way worth trying again; carries the final error."""

    def __init__(self, error: RemoteError, minimum_wait: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.minimum_wait = minimum_wait


class _Unauthorized(Exception):
    """The remote refused the credentials; the 401 hook may refresh them once."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(str(error))
        self.error = error


class RemoteSession:
    """A requests session to one remote system with the project's single retry policy.

    Every attempt first takes rate-limit tokens through `acquire(bucket, cost)`. Retries 429,
    5xx and connection errors with exponential backoff and full jitter, never waiting less
    than the server's Retry-After / x-ratelimit-reset. Other 4xx are raised at once as
    RemoteError carrying the remote's error text; 412 as PreconditionFailed. A 401 may be
    retried once when `on_unauthorized()` says it refreshed the credentials. `on_response`
    (a ResponseHook) reads what the remote reports about its limits.
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        auth: requests.auth.AuthBase | None = None,
        acquire: Acquire | None = None,
        policy: RetryPolicy = RetryPolicy(),
        timeout_s: float = 30.0,
        session: requests.Session | None = None,
        on_unauthorized: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_response: ResponseHook | None = None,
    ) -> None:
        self.system = system
        self.on_response = on_response
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.acquire = acquire
        self.policy = policy
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.on_unauthorized = on_unauthorized
        self._sleep = sleep
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.responses: Counter[int] = Counter()
        self.transport_errors = 0
        self._last_headers: Mapping[str, str] = {}

    @property
    def last_response_headers(self) -> Mapping[str, str]:
        """Headers of the newest response of any status (e.g. Pipedrive's x-ratelimit-*), for
        `ml-connector check`; empty before the first. Shared by threads: the newest wins."""
        return self._last_headers

    def url_for(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        bucket: str = "default",
        cost: int = 1,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one logical request (with retries); return the 2xx/3xx response or raise.

        A non-idempotent request (a create) is retried only on 429, which guarantees it
        was not processed; after a 5xx or a transport error its effect is unknown, so the
        retryable error goes to the caller, which must look before it creates again.
        """
        url = self.url_for(path)
        kwargs.setdefault("timeout", self.timeout_s)
        started = time.monotonic()
        tries = 0
        refreshed = False
        while True:
            tries += 1
            try:
                return self._attempt(method, url, bucket, cost, kwargs)
            except _Unauthorized as unauthorized:
                if refreshed or self.on_unauthorized is None or not self.on_unauthorized():
                    raise unauthorized.error from None
                # The refreshed credentials get one fresh try that does not count as a retry.
                refreshed = True
                tries -= 1
                continue
            except _Retryable as failure:
                if not idempotent and failure.error.status != 429:
                    raise failure.error from None
                elapsed = time.monotonic() - started
                delay = self.policy.delay_s(tries - 1, failure.minimum_wait)
                if tries >= self.policy.max_tries or elapsed + delay > self.policy.max_time_s:
                    raise failure.error from None
                log.info(
                    "%s %s %s failed (%s); retry %d in %.2fs",
                    self.system,
                    method,
                    url,
                    failure.error,
                    tries,
                    delay,
                )
                self._sleep(delay)

    def _attempt(
        self, method: str, url: str, bucket: str, cost: int, kwargs: dict[str, Any]
    ) -> requests.Response:
        if self.acquire is not None:
            self.acquire(bucket, cost)
        with self._lock:
            self.requests_sent += 1
        started = time.monotonic()
        try:
            response = self.session.request(method, url, auth=self.auth, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            _notify(self.system, method, None, time.monotonic() - started)
            with self._lock:
                self.transport_errors += 1
            raise _Retryable(
                RemoteError(self.system, f"{type(error).__name__}: {error}", retryable=True),
                None,
            ) from error
        _notify(self.system, method, response.status_code, time.monotonic() - started)
        self._last_headers = response.headers
        status = response.status_code
        with self._lock:
            self.responses[status] += 1
        pause = self.on_response(response) if self.on_response is not None else None
        if status < 400:
            return response
        text = remote_error_text(response)
        body = response.text[:2000] if response.text else None
        if pause is not None:
            # Every worker's requests wait out the pause (the hook shared it): this one too.
            raise RemoteError(
                self.system, text, status=status, retryable=True, retry_after_s=pause, body=body
            )
        if status in RETRYABLE_STATUS:
            wait = retry_after_seconds(response)
            raise _Retryable(
                RemoteError(
                    self.system, text, status=status, retryable=True, retry_after_s=wait, body=body
                ),
                wait,
            )
        if status == 412:
            raise PreconditionFailed(self.system, text, status=status, body=body)
        refused = RemoteError(self.system, text, status=status, body=body)
        if status == 401:
            raise _Unauthorized(refused)
        raise refused

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()


def json_body(response: requests.Response, system: str) -> Any:
    """The JSON document of a successful response, or RemoteError naming what came instead."""
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError) as error:
        raise RemoteError(
            system,
            f"expected JSON, got {response.headers.get('Content-Type', 'no content type')}",
            status=response.status_code,
            body=(response.text or "")[:2000],
        ) from error
