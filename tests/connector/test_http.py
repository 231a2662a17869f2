"""RemoteSession: retries, backoff waits, error texts and the 401 hook, over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request, Response

from connector.errors import PreconditionFailed, RemoteError
from connector.http import (
    RemoteSession,
    RetryPolicy,
    add_observer,
    remote_error_text,
    remove_observer,
    retry_after_seconds,
)
from connector.ratelimit import RateLimited
from simulators.serving import RunningServer

FAST = RetryPolicy(max_tries=4, base_s=0.001, cap_s=0.01, max_time_s=60)


class ScriptedRemote:
    """A tiny HTTP server answering from a script of (status, headers, body, delay) steps.

    When the script runs out it answers 200 {"ok": true}. It records what it received.
    """

    def __init__(self) -> None:
        self.script: deque[tuple[int, dict[str, str], Any, float]] = deque()
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, status: int, body: Any = None, *, delay: float = 0.0, **headers: str) -> None:
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        self.script.append((status, named, body, delay))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.received.append(
                {
                    "method": request.method,
                    "path": request.full_path.rstrip("?"),
                    "headers": dict(request.headers),
                }
            )
            step = self.script.popleft() if self.script else (200, {}, {"ok": True}, 0.0)
        status, headers, body, delay = step
        if delay:
            time.sleep(delay)
        if isinstance(body, dict | list):
            response = Response(json.dumps(body), status, headers, content_type="application/json")
        else:
            response = Response(body or "", status, headers)
        return response(environ, start_response)


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[ScriptedRemote, str]]:
    app = ScriptedRemote()
    with RunningServer(app) as server:
        yield app, server.url


@pytest.fixture
def remote(scripted_server: tuple[ScriptedRemote, str]) -> tuple[ScriptedRemote, str]:
    app, url = scripted_server
    app.script.clear()
    app.received.clear()
    return app, url


def make_session(url: str, **kwargs: Any) -> tuple[RemoteSession, list[float]]:
    sleeps: list[float] = []
    kwargs.setdefault("policy", FAST)
    session = RemoteSession("ifs", url, sleep=sleeps.append, **kwargs)
    return session, sleeps


def test_503_is_retried_until_success(remote):
    app, url = remote
    app.add(503, {"error": {"code": "ODP_OVERLOAD", "message": "busy"}})
    app.add(503)
    session, sleeps = make_session(url)
    response = session.request("GET", "/things")
    assert response.json() == {"ok": True}
    assert session.requests_sent == 3
    assert session.responses[503] == 2 and session.responses[200] == 1
    assert len(sleeps) == 2


def test_504_and_500_are_retried(remote):
    app, url = remote
    app.add(504, {"error": {"code": "ODP_OPERATION_TIMEOUT", "message": "slow"}})
    app.add(500)
    session, _ = make_session(url)
    assert session.request("GET", "x").status_code == 200
    assert session.requests_sent == 3


def test_429_retry_after_seconds_is_a_minimum_wait(remote):
    app, url = remote
    app.add(429, Retry_After="3")
    session, sleeps = make_session(url)
    session.request("GET", "/x")
    assert sleeps and sleeps[0] >= 3.0


def test_429_retry_after_http_date_is_honoured(remote):
    app, url = remote
    when = datetime.now(UTC) + timedelta(seconds=20)
    app.add(429, Retry_After=format_datetime(when, usegmt=True))
    session, sleeps = make_session(url)
    session.request("GET", "/x")
    assert 15 <= sleeps[0] <= 21


def test_pipedrive_ratelimit_reset_is_a_minimum_wait(remote):
    app, url = remote
    app.add(429, {"success": False, "error": "Rate limit exceeded"}, x_ratelimit_reset="2")
    session, sleeps = make_session(url)
    session.request("GET", "/x")
    assert sleeps[0] >= 2.0


def test_retry_after_beyond_max_time_gives_up_at_once_with_the_hint(remote):
    app, url = remote
    app.add(429, Retry_After="600")
    session, sleeps = make_session(url, policy=RetryPolicy(max_tries=5, max_time_s=30))
    with pytest.raises(RemoteError) as raised:
        session.request("GET", "/x")
    assert raised.value.retryable and raised.value.status == 429
    assert raised.value.retry_after_s == 600
    assert session.requests_sent == 1 and sleeps == []


def test_400_is_not_retried_and_keeps_the_ifs_error_text(remote):
    app, url = remote
    app.add(400, {"error": {"code": "ODP_BAD_FILTER", "message": "Unknown property Foo"}})
    session, sleeps = make_session(url)
    with pytest.raises(RemoteError) as raised:
        session.request("GET", "/x")
    error = raised.value
    assert error.status == 400 and not error.retryable
    assert "ODP_BAD_FILTER" in str(error) and "Unknown property Foo" in str(error)
    assert session.requests_sent == 1 and sleeps == []


def test_404_keeps_the_pipedrive_error_text(remote):
    app, url = remote
    app.add(404, {"success": False, "error": "Deal not found", "error_info": "Check the id"})
    session, _ = make_session(url)
    with pytest.raises(RemoteError, match="Deal not found \\(Check the id\\)") as raised:
        session.request("GET", "/x")
    assert raised.value.status == 404
    assert not isinstance(raised.value, PreconditionFailed)


def test_412_raises_precondition_failed(remote):
    app, url = remote
    app.add(412, {"error": {"code": "ODP_PRECONDITION_FAILED", "message": "stale"}})
    session, _ = make_session(url)
    with pytest.raises(PreconditionFailed, match="stale"):
        session.request("PATCH", "/x", json={})
    assert session.requests_sent == 1


def test_exhausted_retries_raise_a_retryable_error(remote):
    app, url = remote
    for _ in range(10):
        app.add(503, {"error": {"code": "OVERLOAD", "message": "try later"}})
    session, sleeps = make_session(url, policy=RetryPolicy(max_tries=3, base_s=0.001, cap_s=0.01))
    with pytest.raises(RemoteError) as raised:
        session.request("GET", "/x")
    assert raised.value.retryable and raised.value.status == 503
    assert "try later" in str(raised.value)
    assert session.requests_sent == 3 and len(sleeps) == 2


def test_connection_errors_are_retried_then_reported():
    with RunningServer(ScriptedRemote()) as server:
        url = server.url
    session, sleeps = make_session(url, policy=RetryPolicy(max_tries=3, base_s=0.001, cap_s=0.01))
    with pytest.raises(RemoteError) as raised:
        session.request("GET", "/x")
    assert raised.value.retryable and raised.value.status is None and len(sleeps) == 2
    assert session.requests_sent == 3 and session.transport_errors == 3


def test_read_timeout_is_retried(remote):
    app, url = remote
    app.add(200, {"late": True}, delay=1.0)
    session, _ = make_session(url, timeout_s=0.2)
    assert session.request("GET", "/x").json() == {"ok": True}
    assert session.transport_errors == 1 and session.requests_sent == 2


def test_401_refreshes_credentials_once(remote):
    app, url = remote
    app.add(401, {"error": {"code": "UNAUTHORIZED", "message": "expired"}})
    refreshes: list[int] = []

    def refresh() -> bool:
        refreshes.append(1)
        return True

    session, _ = make_session(url, on_unauthorized=refresh)
    assert session.request("GET", "/x").status_code == 200
    assert refreshes == [1] and session.requests_sent == 2


def test_second_401_after_refresh_is_raised(remote):
    app, url = remote
    app.add(401)
    app.add(401, {"error": {"code": "UNAUTHORIZED", "message": "still bad"}})
    refreshes: list[int] = []

    def refresh() -> bool:
        refreshes.append(1)
        return True

    session, _ = make_session(url, on_unauthorized=refresh)
    with pytest.raises(RemoteError, match="still bad") as raised:
        session.request("GET", "/x")
    assert raised.value.status == 401 and refreshes == [1] and session.requests_sent == 2


def test_401_without_refresh_is_raised_at_once(remote):
    app, url = remote
    app.add(401)
    session, _ = make_session(url, on_unauthorized=lambda: False)
    with pytest.raises(RemoteError):
        session.request("GET", "/x")
    assert session.requests_sent == 1


def test_acquire_is_called_before_every_attempt(remote):
    app, url = remote
    app.add(503)
    app.add(429)
    taken: list[tuple[str, int]] = []
    session, _ = make_session(url, acquire=lambda bucket, cost: taken.append((bucket, cost)))
    session.request("GET", "/x", bucket="search", cost=20)
    assert taken == [("search", 20)] * 3


def test_rate_limited_acquire_sends_nothing(remote):
    app, url = remote

    def refuse(bucket: str, cost: int) -> None:
        raise RateLimited("pipedrive:t1", 1.5)

    session, _ = make_session(url, acquire=refuse)
    with pytest.raises(RateLimited):
        session.request("GET", "/x")
    assert app.received == [] and session.requests_sent == 0


def test_observers_see_every_attempt(remote):
    app, url = remote
    app.add(503)
    seen: list[tuple[str, str, int | None]] = []

    def observe(system: str, method: str, status: int | None, seconds: float) -> None:
        assert seconds >= 0
        seen.append((system, method, status))

    add_observer(observe)
    try:
        session, _ = make_session(url)
        session.request("GET", "/x")
    finally:
        remove_observer(observe)
    assert seen == [("ifs", "GET", 503), ("ifs", "GET", 200)]


def test_relative_and_absolute_paths(remote):
    app, url = remote
    session, _ = make_session(url + "/base/")
    session.request("GET", "a/b", params={"q": "1"})
    session.request("GET", f"{url}/elsewhere")
    assert [r["path"] for r in app.received] == ["/base/a/b?q=1", "/elsewhere"]


def test_counters_are_thread_safe(remote):
    _, url = remote
    session, _ = make_session(url)

    def work() -> None:
        for _ in range(20):
            session.request("GET", "/x")

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert session.requests_sent == 120 and session.responses[200] == 120


def test_delays_are_full_jitter_under_the_exponential_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    for _ in range(50):
        values = [policy.delay_s(retry) for retry in range(6)]
        for n, value in enumerate(values):
            assert 0 <= value <= min(4.0, 0.5 * 2**n)


def test_full_jitter_spreads_delays():
    delays = {round(RetryPolicy(base_s=1.0).delay_s(0), 3) for _ in range(30)}
    assert len(delays) > 5


def test_a_delay_is_never_shorter_than_the_hint():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    assert all(policy.delay_s(retry, minimum_s=7.5) == 7.5 for retry in range(8))
    assert all(policy.delay_s(2, minimum_s=0.0) <= 2.0 for _ in range(20))
    assert policy.delay_s(10_000) <= 4.0  # no overflow however many retries


def test_retry_after_parsing():
    response = requests.Response()
    response.headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert retry_after_seconds(response, now=now) == 30
    response.headers["Retry-After"] = "garbage"
    assert retry_after_seconds(response) is None
    response.headers["x-ratelimit-reset"] = "7"
    assert retry_after_seconds(response) == 7


def test_error_text_falls_back_to_the_body():
    response = requests.Response()
    response.status_code = 403
    response._content = b"<html>blocked</html>"
    assert remote_error_text(response) == "<html>blocked</html>"
