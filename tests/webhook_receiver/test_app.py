"""The receiver over real HTTP: authentication, size limits, dedupe, enqueueing, health."""

from __future__ import annotations

import base64
import hmac
import logging
import os
from typing import Any

import psycopg2.extensions
import pytest
import redis
import requests
import sqlalchemy as sa
import yaml

from connector.jobs import PUSH_STAGE
from connector.live_config import LiveConfig
from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.models import WebhookRefusal
from connector.storage.webhook_events import WebhookEventStatus
from connector.storage.webhook_refusals import WebhookRefusals
from connector.webhooks import auth
from connector.webhooks.auth import sign
from simulators.serving import RunningServer
from tests.connector.webhooks.support import (
    KEY,
    encode,
    events_of,
    make_runtime,
    malformed_variants,
    prepare_database,
    tenant_body,
    unique_tenant,
    v2_deal_event,
)
from webhook_receiver.app import EXTENSION, ReceiverContext, create_app

USER, PASSWORD, HMAC_SECRET = "pipedrive", "s3cret-Basic-pw", "hmac-shared-secret"
HEADER = "X-ML-Signature"


class Broker:
    """The injected enqueue: records calls, or fails like a broker that is down."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    def enqueue(self, name: str, kwargs: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.calls.append((name, kwargs))

    def check(self) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")


@pytest.fixture
def tenants() -> dict[str, str]:
    return {
        "basic": unique_tenant("basic"),
        "hmac": unique_tenant("hmac"),
        "both": unique_tenant("both"),
        "small": unique_tenant("small"),
    }


@pytest.fixture
def runtime(postgres_url, tenants):
    prepare_database(postgres_url)
    runtime = make_runtime(
        postgres_url,
        {
            tenants["basic"]: tenant_body(auth="basic"),
            tenants["hmac"]: tenant_body(auth="hmac"),
            tenants["both"]: tenant_body(auth="both"),
            tenants["small"]: tenant_body(auth="basic", max_body_bytes=1000),
        },
    )
    for tenant_id in tenants.values():
        runtime.vault.set(tenant_id, "webhook", "basic_user", USER)
        runtime.vault.set(tenant_id, "webhook", "basic_password", PASSWORD)
        runtime.vault.set(tenant_id, "webhook", "hmac_secret", HMAC_SECRET)
    yield runtime
    runtime.close()


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def app(runtime, broker):
    return create_app(runtime, broker.enqueue, {"TESTING": True}, check_broker=broker.check)


class Switch:
    """A WSGI app that forwards to the current test's receiver (one server per module)."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.target(environ, start_response)


@pytest.fixture(scope="module")
def shared_server():
    switch = Switch()
    with RunningServer(switch) as running:
        yield running, switch


@pytest.fixture
def server(app, shared_server):
    running, switch = shared_server
    switch.target = app
    return running


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def post(server: RunningServer, tenant_id: str, body: bytes, headers: dict[str, str]):
    return requests.post(
        f"{server.url}/webhooks/pipedrive/{tenant_id}", data=body, headers=headers, timeout=10
    )


# -- accepted deliveries ------------------------------------------------------------------


def test_a_valid_event_is_persisted_and_enqueued_once_when_delivered_three_times(
    server, runtime, broker, tenants
):
    tenant = tenants["basic"]
    payload = v2_deal_event(101)
    answers = []
    for attempt in (1, 2, 3):
        payload["meta"]["attempt"] = attempt  # Pipedrive's retries differ only in the attempt
        answers.append(post(server, tenant, encode(payload), basic()))

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["status"] == "accepted"
    assert [a.json()["status"] for a in answers[1:]] == ["duplicate", "duplicate"]
    rows = events_of(runtime, tenant)
    assert len(rows) == 1
    assert rows[0].event_id == payload["meta"]["id"]
    assert rows[0].entity_id == 101 and rows[0].status == WebhookEventStatus.ENQUEUED
    assert broker.calls == [(PUSH_STAGE, {"tenant": tenant, "webhook_event_id": rows[0].id})]


def test_every_answer_to_a_delivery_is_json_with_its_content_type(server, tenants):
    """The answers are built without flask.jsonify: still JSON objects, named as such."""
    tenant = tenants["basic"]
    body = encode(v2_deal_event(102, event_id="evt-answers-102"))
    answers = {
        "accepted": post(server, tenant, body, basic()),
        "duplicate": post(server, tenant, body, basic()),
        "bad_payload": post(server, tenant, b'{"meta": []}', basic()),
        "bad_auth": post(server, tenant, body, basic(password="guess")),
        "unknown_tenant": post(server, "no-such-tenant", body, basic()),
    }
    assert {name: a.status_code for name, a in answers.items()} == {
        "accepted": 200,
        "duplicate": 200,
        "bad_payload": 400,
        "bad_auth": 401,
        "unknown_tenant": 401,
    }
    for answer in answers.values():
        assert answer.headers["Content-Type"] == "application/json"
    assert answers["accepted"].json() == {"status": "accepted", "event_id": "evt-answers-102"}
    assert answers["duplicate"].json() == {"status": "duplicate"}
    assert (
        answers["bad_auth"].json() == answers["unknown_tenant"].json() == {"error": "unauthorized"}
    )


def test_a_v1_event_without_an_event_id_is_deduplicated_by_its_content(
    server, runtime, broker, tenants
):
    tenant = tenants["basic"]
    payload = {
        "v": 1,
        "event": "updated.deal",
        "current": {"id": 7, "stage_id": 3, "status": "open"},
        "previous": {"id": 7, "stage_id": 2, "status": "open"},
        "retry": 0,
        "meta": {"v": 1, "action": "updated", "object": "deal", "id": 7, "timestamp": 1767261600},
    }
    first = post(server, tenant, encode(payload), basic())
    payload["retry"] = 1
    second = post(server, tenant, encode(payload), basic())

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "duplicate"
    rows = events_of(runtime, tenant)
    assert len(rows) == 1 and rows[0].entity_id == 7 and rows[0].action == "change"
    assert len(broker.calls) == 1


def test_an_event_of_another_entity_is_stored_as_ignored_and_not_enqueued(
    server, runtime, broker, tenants
):
    tenant = tenants["basic"]
    payload = v2_deal_event(5, entity="organization")
    answer = post(server, tenant, encode(payload), basic())

    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert [row.status for row in events_of(runtime, tenant)] == [WebhookEventStatus.IGNORED]
    assert broker.calls == []


def test_hmac_signature_with_or_without_prefix_is_accepted(server, runtime, broker, tenants):
    tenant = tenants["hmac"]
    first, second = encode(v2_deal_event(1)), encode(v2_deal_event(2))
    plain = post(server, tenant, first, {HEADER: sign(HMAC_SECRET, first)})
    prefixed = post(server, tenant, second, {HEADER: "sha256=" + sign(HMAC_SECRET, second)})

    assert (plain.status_code, prefixed.status_code) == (200, 200)
    assert len(events_of(runtime, tenant)) == 2 and len(broker.calls) == 2


def test_mode_both_needs_basic_and_signature(server, runtime, broker, tenants):
    tenant = tenants["both"]
    body = encode(v2_deal_event(3))
    only_basic = post(server, tenant, body, basic())
    only_signature = post(server, tenant, body, {HEADER: sign(HMAC_SECRET, body)})
    both = post(server, tenant, body, {**basic(), HEADER: sign(HMAC_SECRET, body)})

    assert (only_basic.status_code, only_signature.status_code, both.status_code) == (
        401,
        401,
        200,
    )
    assert len(events_of(runtime, tenant)) == 1 and len(broker.calls) == 1


# -- rejections ---------------------------------------------------------------------------


def _rejected(runtime, broker, tenant_ids):
    for tenant_id in tenant_ids:
        assert events_of(runtime, tenant_id) == []
    assert broker.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(basic(password="wrong"), id="wrong-password"),
        pytest.param(basic(user="someone-else"), id="wrong-user"),
        pytest.param({"Authorization": "Basic !!!notbase64"}, id="garbled"),
        pytest.param({"Authorization": "Bearer " + PASSWORD}, id="other-scheme"),
        pytest.param({}, id="no-credentials"),
    ],
)
def test_bad_basic_credentials_are_401_and_nothing_is_stored(
    server, runtime, broker, tenants, headers
):
    answer = post(server, tenants["basic"], encode(v2_deal_event(1)), headers)

    assert answer.status_code == 401
    assert answer.json() == {"error": "unauthorized"}
    _rejected(runtime, broker, [tenants["basic"]])


def test_unknown_tenant_gets_the_same_401_as_bad_credentials(server, runtime, broker, tenants):
    unknown = post(server, "no-such-tenant", encode(v2_deal_event(1)), basic())
    wrong = post(server, tenants["basic"], encode(v2_deal_event(1)), basic(password="x"))

    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content
    _rejected(runtime, broker, [tenants["basic"], "no-such-tenant"])


def test_tampered_body_and_bad_signatures_are_401(server, runtime, broker, tenants):
    tenant = tenants["hmac"]
    body = encode(v2_deal_event(1, stage_id=2))
    signature = sign(HMAC_SECRET, body)
    tampered = body.replace(b'"stage_id":2', b'"stage_id":9')
    answers = [
        post(server, tenant, tampered, {HEADER: signature}),
        post(server, tenant, body, {HEADER: sign("another-secret", body)}),
        post(server, tenant, body, {HEADER: "sha256=" + "0" * 64}),
        post(server, tenant, body, {HEADER: "not hex at all"}),
        post(server, tenant, body, {}),
    ]

    assert tampered != body
    assert [a.status_code for a in answers] == [401] * 5
    _rejected(runtime, broker, [tenant])


def test_a_10_mb_body_is_413_and_nothing_is_stored(app, runtime, broker, tenants):
    client = app.test_client()
    body = b'{"meta": {}, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    answer = client.post(f"/webhooks/pipedrive/{tenants['basic']}", data=body, headers=basic())

    assert answer.status_code == 413
    _rejected(runtime, broker, [tenants["basic"]])


def test_a_chunked_body_over_the_tenant_limit_is_413(server, runtime, broker, tenants):
    payload = v2_deal_event(1)
    payload["data"]["title"] = "x" * 3000  # the "small" tenant allows 1000 bytes

    def chunks():  # a generator makes requests send Transfer-Encoding: chunked
        yield encode(payload)

    answer = requests.post(
        f"{server.url}/webhooks/pipedrive/{tenants['small']}",
        data=chunks(),
        headers=basic(),
        timeout=10,
    )

    assert answer.status_code == 413
    _rejected(runtime, broker, [tenants["small"]])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"meta": {"action": "change",', id="broken-json"),
        pytest.param(b"\xff\xfe not utf-8", id="not-utf8"),
        pytest.param(b"[1, 2, 3]", id="array"),
        pytest.param(b'{"data": {"id": 1}}', id="no-meta"),
        pytest.param(b'{"meta": {"action": "change"}, "data": {"id": 1}}', id="no-entity"),
        pytest.param(
            b'{"meta": {"action": "explode", "entity": "deal"}, "data": {"id": 1}}',
            id="unknown-action",
        ),
    ],
)
def test_malformed_payloads_are_400_and_nothing_is_stored(server, runtime, broker, tenants, body):
    answer = post(server, tenants["basic"], body, basic())

    assert answer.status_code == 400
    _rejected(runtime, broker, [tenants["basic"]])


def test_authenticated_deliveries_of_the_wrong_shape_are_400_and_nothing_is_stored(
    app, runtime, broker, tenants
):
    client = app.test_client()
    tenant = tenants["basic"]
    variants = malformed_variants()
    answers = {
        name: client.post(f"/webhooks/pipedrive/{tenant}", data=body, headers=basic())
        for name, body in variants
    }

    assert {name: a.status_code for name, a in answers.items()} == {n: 400 for n, _ in variants}
    assert all(a.get_json()["error"] for a in answers.values())  # the reason, for the sender
    _rejected(runtime, broker, [tenant])
    good = client.post(
        f"/webhooks/pipedrive/{tenant}", data=encode(v2_deal_event(41)), headers=basic()
    )
    assert good.status_code == 200 and len(events_of(runtime, tenant)) == 1


def test_refusals_are_kept_with_tenant_reason_and_address_but_no_credential(
    server, runtime, broker, tenants
):
    tenant = tenants["basic"]
    post(server, tenant, encode(v2_deal_event(1)), basic(password="guess-" + PASSWORD))
    post(server, "no-such-tenant", encode(v2_deal_event(1)), basic())
    post(server, tenant, b'{"meta": []}', basic())
    refusals = WebhookRefusals(runtime.database)

    mine = [(r.reason, r.http_status, r.remote_addr) for r in refusals.recent(tenant)]
    assert mine == [("bad_payload", 400, "127.0.0.1"), ("bad_auth", 401, "127.0.0.1")]
    unknown = [r for r in refusals.recent() if r.tenant is None]
    assert unknown and unknown[0].reason == "unknown_tenant"
    with runtime.database.session() as session:
        stored = " ".join(
            str(value)
            for row in session.execute(sa.select(WebhookRefusal)).all()
            for value in row[0].__dict__.values()
        )
    assert PASSWORD not in stored and "no-such-tenant" not in stored


def test_an_unknown_tenant_is_refused_by_the_same_checks_as_a_wrong_password(
    app, runtime, broker, tenants, monkeypatch
):
    """Equal work, not equal time measured: the same credential compares, the same reads
    and statements, the same answer (timings would be flaky on a shared machine)."""
    client = app.test_client()
    tenant = tenants["basic"]
    ok = client.post(
        f"/webhooks/pipedrive/{tenant}", data=encode(v2_deal_event(1)), headers=basic()
    )
    assert ok.status_code == 200  # the tenant's secrets are cached now, as in steady state
    compares: list[int] = []
    monkeypatch.setattr(
        auth, "compare_digest", lambda a, b: compares.append(1) or hmac.compare_digest(a, b)
    )
    statements: list[str] = []
    sa.event.listen(runtime.database.engine, "before_cursor_execute", _record(statements))
    context: ReceiverContext = app.extensions[EXTENSION]

    def refusal_work(tenant_id: str) -> tuple[int, int, int, bytes, list[str]]:
        compares.clear()
        statements.clear()
        reads = context.credentials.reads
        body = encode(v2_deal_event(2))
        headers = basic(password="guess")
        answer = client.post(f"/webhooks/pipedrive/{tenant_id}", data=body, headers=headers)
        return (
            answer.status_code,
            len(compares),
            context.credentials.reads - reads,
            answer.get_data(),
            [statement.split()[0] for statement in statements],
        )

    refusal_work(tenant)  # the first refusal of a process also prunes old ones
    wrong_password = refusal_work(tenant)
    unknown = refusal_work("no-such-tenant")

    assert wrong_password[0] == 401
    assert wrong_password[1] == 2  # user and password, both always compared
    assert wrong_password[2] == 0  # the secrets came from memory
    assert wrong_password[4] == ["INSERT"]  # the kept refusal
    assert unknown == wrong_password


def _record(statements: list[str]) -> Any:
    def before_cursor_execute(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement.strip())

    return before_cursor_execute


def test_one_statement_per_webhook_committed_by_itself_and_the_enqueue_comes_after_it(
    app, runtime, broker, tenants
):
    tenant = tenants["basic"]
    client = app.test_client()
    client.post(f"/webhooks/pipedrive/{tenant}", data=encode(v2_deal_event(1)), headers=basic())
    # (statement verb, its connection's transaction status once it ran): idle means that it
    # ran in autocommit, its own commit, with no BEGIN before it and no COMMIT after it.
    work: list[tuple[str, str]] = []
    statuses = {
        psycopg2.extensions.TRANSACTION_STATUS_IDLE: "idle",
        psycopg2.extensions.TRANSACTION_STATUS_INTRANS: "in transaction",
    }

    def after_cursor_execute(conn, _cursor, statement, *_args) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status
        work.append((statement.split()[0], statuses.get(status, str(status))))

    sa.event.listen(runtime.database.engine, "after_cursor_execute", after_cursor_execute)
    seen_at_enqueue: list[Any] = []

    def enqueue(name: str, kwargs: dict[str, Any]) -> None:
        seen_at_enqueue.append(list(work))
        # Another connection: only what was committed is visible here.
        seen_at_enqueue.append([row.status for row in events_of(runtime, tenant)])
        work.clear()  # the reads of this check are not the receiver's
        broker.enqueue(name, kwargs)

    app.extensions[EXTENSION].enqueue = enqueue
    work.clear()
    answer = client.post(
        f"/webhooks/pipedrive/{tenant}", data=encode(v2_deal_event(2)), headers=basic()
    )

    assert answer.status_code == 200 and len(broker.calls) == 2
    # One INSERT, committed by itself, then the enqueue, then nothing.
    assert seen_at_enqueue == [[("INSERT", "idle")], ["enqueued", "enqueued"]]
    assert work == []


def test_secrets_are_read_once_and_again_when_the_credential_changes(
    postgres_url, tmp_path, broker
):
    tenant = unique_tenant("live")
    tenants_file = tmp_path / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump({"tenants": {tenant: tenant_body(auth="basic")}}))
    clock = Clock()
    runtime = Runtime(
        Settings(database_url=postgres_url, encryption_keys=KEY, tenants_file=tenants_file)
    )
    runtime.live = LiveConfig(runtime, tenants_file, interval_s=5.0, clock=clock)
    runtime.vault.set(tenant, "webhook", "basic_user", USER)
    runtime.vault.set(tenant, "webhook", "basic_password", PASSWORD)
    app = create_app(runtime, broker.enqueue, {"TESTING": True}, check_broker=broker.check)
    client = app.test_client()
    credentials = app.extensions[EXTENSION].credentials

    def deliver(password: str, deal_id: int) -> int:
        body = encode(v2_deal_event(deal_id))
        url = f"/webhooks/pipedrive/{tenant}"
        return client.post(url, data=body, headers=basic(password=password)).status_code

    try:
        assert [deliver(PASSWORD, n) for n in (1, 2, 3)] == [200, 200, 200]
        assert credentials.reads == 1
        runtime.vault.set(tenant, "webhook", "basic_password", "the-new-password")
        clock.now += 5.0  # the live configuration's next check sees the new version stamp

        assert deliver(PASSWORD, 4) == 401
        assert deliver("the-new-password", 5) == 200
        assert credentials.reads == 2
    finally:
        runtime.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rejections_are_logged_without_credentials(server, runtime, broker, tenants, caplog):
    caplog.set_level(logging.INFO, logger="webhook_receiver")
    post(server, tenants["basic"], encode(v2_deal_event(1)), basic(password="guess-" + PASSWORD))
    body = encode(v2_deal_event(1))
    post(server, tenants["hmac"], body, {HEADER: sign(HMAC_SECRET, body + b" ")})

    rejections = [r for r in caplog.records if r.name == "webhook_receiver"]
    assert len(rejections) == 2
    text = caplog.text
    assert "bad_auth" in text and "bad_signature" in text
    for secret in (PASSWORD, HMAC_SECRET, "Basic ", sign(HMAC_SECRET, body + b" ")):
        assert secret not in text


def test_rejections_are_counted_in_the_metrics(server, tenants):
    def rejected(reason: str) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("mlc_webhook_rejections_total") and f'reason="{reason}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = rejected("bad_auth")
    post(server, tenants["basic"], encode(v2_deal_event(1)), basic(password="nope"))

    assert rejected("bad_auth") == before + 1


# -- availability -------------------------------------------------------------------------


def test_enqueue_failure_is_503_and_the_redelivery_enqueues(server, runtime, broker, tenants):
    tenant = tenants["basic"]
    body = encode(v2_deal_event(42))
    broker.down = True
    first = post(server, tenant, body, basic())

    assert first.status_code == 503
    assert [row.status for row in events_of(runtime, tenant)] == [WebhookEventStatus.RECEIVED]
    assert broker.calls == []

    broker.down = False
    second = post(server, tenant, body, basic())
    third = post(server, tenant, body, basic())

    assert (second.status_code, third.status_code) == (200, 200)
    assert third.json()["status"] == "duplicate"
    rows = events_of(runtime, tenant)
    assert [row.status for row in rows] == [WebhookEventStatus.ENQUEUED]
    assert broker.calls == [(PUSH_STAGE, {"tenant": tenant, "webhook_event_id": rows[0].id})]


def test_database_down_is_503_and_nothing_is_enqueued(broker):
    tenant = unique_tenant()
    runtime = make_runtime(
        "postgresql+psycopg2://postgres@127.0.0.1:9/none?connect_timeout=2",
        {tenant: tenant_body(auth="basic")},
    )
    client = create_app(runtime, broker.enqueue, check_broker=broker.check).test_client()

    answer = client.post(
        f"/webhooks/pipedrive/{tenant}", data=encode(v2_deal_event(1)), headers=basic()
    )
    ready = client.get("/readyz")

    assert answer.status_code == 503
    assert broker.calls == []
    assert ready.status_code == 503
    assert ready.get_json()["database"] == "unavailable" and ready.get_json()["broker"] == "ok"


def test_health_and_readiness(server, broker):
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}

    broker.down = True
    not_ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert not_ready.status_code == 503
    assert not_ready.json()["broker"] == "unavailable"
    assert not_ready.json()["database"] == "ok"


def test_readiness_says_when_the_database_is_not_migrated(tmp_path, tenants, broker):
    empty = make_runtime(f"sqlite:///{tmp_path / 'empty.db'}", {tenants["basic"]: tenant_body()})
    app = create_app(empty, broker.enqueue, {"TESTING": True}, check_broker=broker.check)

    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["database"] == "not migrated"
    assert response.get_json()["broker"] == "ok"
    empty.close()


def test_metrics_scrape_measures_the_queue_of_a_redis_broker(
    tmp_path, tenants, broker, redis_url, redis_prefix
):
    queue = f"{redis_prefix}ml-connector"
    redis.Redis.from_url(redis_url).rpush(queue, "m1", "m2")
    runtime = make_runtime(f"sqlite:///{tmp_path / 'r.db'}", {tenants["basic"]: tenant_body()})
    runtime.settings = runtime.settings.model_copy(update={"broker_url": redis_url, "queue": queue})
    client = create_app(runtime, broker.enqueue, check_broker=broker.check).test_client()

    body = client.get("/metrics").get_data(as_text=True)

    assert f'mlc_queue_depth{{queue="{queue}"}} 2.0' in body
    runtime.close()


def test_a_receiver_built_from_embedded_defaults_is_not_ready(tmp_path, monkeypatch, broker):
    from connector.settings import get_settings
    from connector.storage.migrate import upgrade

    for name in [name for name in os.environ if name.startswith("CONNECTOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    upgrade("sqlite:///var/connector.db")  # the default file, migrated: only the setup is wrong
    get_settings.cache_clear()
    try:
        app = create_app(enqueue=broker.enqueue, check_broker=broker.check)
        response = app.test_client().get("/readyz")
    finally:
        get_settings.cache_clear()

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["database"] == "ok"
    assert "CONNECTOR_BROKER_URL" in body["settings"]
    assert "CONNECTOR_DATABASE_URL" in body["settings"]


def test_readyz_names_a_tenants_file_problem_another_role_reported(
    tmp_path, broker, postgres_url, redis_url, redis_prefix
):
    import yaml

    from connector.live_config import LiveConfig
    from connector.runtime import Runtime
    from connector.settings import Settings

    ours, theirs = tmp_path / "tenants.yaml", tmp_path / "beat-tenants.yaml"
    tenant = unique_tenant("ready")
    ours.write_text(yaml.safe_dump({"tenants": {tenant: tenant_body()}}))
    theirs.write_text(yaml.safe_dump({"tenants": {tenant: {**tenant_body(), "schedul": "x"}}}))
    settings = Settings(
        database_url=postgres_url,
        encryption_keys=KEY,
        redis_url=redis_url,
        queue=f"{redis_prefix}queue",
        tenants_file=ours,
    )
    receiver, beat = (
        Runtime(settings),
        Runtime(settings.model_copy(update={"tenants_file": theirs})),
    )
    assert receiver.go_live(role="receiver") is not None
    beat.live = LiveConfig(beat, theirs, role="beat")
    client = create_app(receiver, broker.enqueue, check_broker=broker.check).test_client()
    try:
        assert client.get("/readyz").get_json()["tenants_file"] == "ok"
        beat.refresh_if_stale()

        answer = client.get("/readyz")

        assert answer.status_code == 200  # still serving every tenant
        body = answer.get_json()
        assert body["tenants_file"] == "invalid" and "tenants_file_problems" not in body
        (report,) = body["tenants_file_reports"]
        assert (report["role"], report["pid"]) == ("beat", os.getpid())
        assert f"tenant '{tenant}': key 'schedul': unknown key" in report["problems"][0]
        assert len(report["digest"]) == 64  # the sha256 of the file that role read
    finally:
        beat.close()
        receiver.close()


def test_after_keys_rotate_a_receiver_without_the_new_key_answers_503_saying_why(
    runtime, broker, tenants, caplog
):
    from cryptography.fernet import Fernet

    from connector.logs import redact_text
    from connector.storage.vault import Vault

    tenant_id = tenants["basic"]
    new_key = Fernet.generate_key().decode()
    # What `keys rotate` with a new key first leaves for this tenant: its credentials
    # re-encrypted with that key. (Vault.rotate itself re-encrypts every tenant of the shared
    # test database, other tests' tenants under other keys included.)
    rotated = Vault(runtime.database, [new_key, KEY])
    for name, value in (
        ("basic_user", USER),
        ("basic_password", PASSWORD),
        ("hmac_secret", HMAC_SECRET),
    ):
        rotated.set(tenant_id, "webhook", name, value)
    client = create_app(runtime, broker.enqueue, check_broker=broker.check).test_client()
    body = encode(v2_deal_event(5))

    with caplog.at_level(logging.ERROR, logger="webhook_receiver"):
        answer = client.post(f"/webhooks/pipedrive/{tenant_id}", data=body, headers=basic())

    assert answer.status_code == 503  # Pipedrive retries once the receiver has the key
    assert broker.calls == [] and events_of(runtime, tenant_id) == []
    # The line survives the log redaction with its cause and the setting to fix.
    logged = [redact_text(record.getMessage()) for record in caplog.records]
    assert any(
        f"cannot decrypt webhook credential 'basic_user' of tenant '{tenant_id}': "
        "wrong CONNECTOR_ENCRYPTION_KEYS" in line
        for line in logged
    ), logged
