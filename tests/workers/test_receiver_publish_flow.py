"""The receiver's own publisher (webhook_receiver.app.celery_enqueue), on Redis and RabbitMQ:
a delivery's stage push reaches the workers of the interactive queue, and it is sent without
a task-sent event (one broker round trip per delivery), while the workers' events still
reach Flower's event stream."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from celery import Celery

from connector import jobs
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.storage.webhook_events import FINISHED
from sandbox.stack import Stack
from simulators.serving import RunningServer
from tests.connector.webhooks.support import encode, events_of, v2_deal_event
from webhook_receiver.app import create_app

pytestmark = pytest.mark.integration

USER, PASSWORD = "pipedrive", "publish-flow-password-0123456789"


@contextmanager
def celery_events(broker_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event on the broker while the block runs (the stream Flower reads)."""
    seen: list[dict[str, Any]] = []
    app = Celery(broker=broker_url)
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": seen.append})
        thread = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True
        )
        thread.start()
        try:
            yield seen
        finally:
            receiver.should_stop = True
            thread.join(10)


def deliver(stack: Stack, url: str, deal_id: int) -> requests.Response:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    body = encode(v2_deal_event(deal_id))
    url = f"{url}/webhooks/pipedrive/{stack.tenant}"
    return requests.post(url, data=body, headers=headers, timeout=10)


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_delivery_reaches_the_interactive_workers_and_sends_no_task_sent_event(
    stack_factory,
) -> None:
    stack = stack_factory(tenant_overrides={"webhook": {"auth": "basic"}})
    stack.runtime.vault.set(stack.tenant, "webhook", "basic_user", USER)
    stack.runtime.vault.set(stack.tenant, "webhook", "basic_password", PASSWORD)
    runtime = Runtime(stack.runtime.settings)
    # The receiver's default enqueue: its own Celery app on the stack's broker.
    app = create_app(runtime=runtime, check_broker=lambda: None)
    # Only the interactive queue is consumed: a stage push sent to the bulk queue would never
    # be handled.
    (worker,) = stack.start_workers(count=1, concurrency=1, queue=stack.interactive_queue)

    def ours(event: dict[str, Any]) -> bool:
        return event.get("name") == jobs.PUSH_STAGE and stack.tenant in str(event.get("kwargs"))

    try:
        with RunningServer(app) as server, celery_events(stack.broker_url) as seen:
            # The stream listens (a probe of ours comes through) before anything is sent.
            probe = f"probe-{stack.tenant}"
            prober = Celery(broker=stack.broker_url)
            with prober.events.default_dispatcher() as dispatcher:

                def listening() -> bool:
                    dispatcher.send(probe)
                    return any(e["type"] == probe for e in seen)

                assert wait_until(listening, 30, interval=0.2)
            prober.close()
            answer = deliver(stack, server.url, deal_id=4242)
            assert answer.status_code == 200, answer.text

            def handled() -> bool:
                rows = events_of(runtime, stack.tenant)
                return len(rows) == 1 and rows[0].status in FINISHED

            assert wait_until(handled, 60), stack.worker_logs()
            received = [e for e in seen if e["type"] == "task-received" and ours(e)]
            assert len(received) == 1, [e["type"] for e in seen]
            task_id = received[0]["uuid"]
            assert wait_until(
                lambda: any(e["type"] == "task-succeeded" and e["uuid"] == task_id for e in seen),
                20,
            ), [e["type"] for e in seen]
    finally:
        stack.stop_workers()
        runtime.close()

    row = events_of(runtime, stack.tenant)[0]
    assert f"'webhook_event_id': {row.id}" in str(received[0]["kwargs"])
    # The worker's events came through this stream; the receiver's publish sent none.
    assert [e for e in seen if e["type"] == "task-sent" and ours(e)] == []
    assert worker.poll() is None or worker.returncode == 0
