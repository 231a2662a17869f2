"""The receiver's publisher (workers.publish.HeldPublisher) on Redis and RabbitMQ, through a
TCP proxy that can cut its connection: a send after the held connection broke still
arrives, a send while the broker is unreachable raises BrokerUnavailableError (the receiver
answers 503, the stored event waits for the sweeper), and the next send after the broker
is back arrives; every message is a Celery task message on the interactive queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from kombu import Connection, Queue

from connector import jobs
from connector.errors import BrokerUnavailableError
from connector.settings import Settings
from sandbox.tcp_proxy import TcpProxy
from workers.app import create_celery_app
from workers.publish import HeldPublisher, HeldRedisTransport

pytestmark = pytest.mark.integration


def _via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxied(broker_url: str) -> Iterator[tuple[TcpProxy, str, str]]:
    """(a proxy to the broker, the broker's URL through it, a queue name of this test)."""
    parts = urlsplit(broker_url)
    queue = f"mlc-test-publish-{uuid.uuid4().hex[:10]}"
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0) as proxy:
        yield proxy, _via(broker_url, proxy.port), queue
    interactive = f"{queue}-interactive"
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        for name in (queue, interactive):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = connection.channel()  # RabbitMQ closes a channel on an error


def _publisher(url: str, queue: str) -> HeldPublisher:
    return HeldPublisher(
        create_celery_app(Settings(broker_url=url, queue=queue), sent_events=False)
    )


def _messages(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Take every message of `queue` (directly, not through the proxy): headers and kwargs;
    none when it does not exist (RabbitMQ: never declared)."""
    taken: list[dict[str, Any]] = []
    with Connection(broker_url) as connection:
        source = Queue(queue, channel=connection.default_channel)
        try:
            while (message := source.get(no_ack=True)) is not None:
                _args, kwargs, _embed = message.decode()
                taken.append({"task": message.headers["task"], "kwargs": kwargs})
        except connection.channel_errors:
            pass
    return taken


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_send_after_the_held_connection_broke_still_arrives(broker_url, proxied) -> None:
    proxy, url, queue = proxied
    publisher = _publisher(url, queue)
    try:
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 1})
        if broker_url.startswith("amqp"):
            # Each publish on the held channel waits for the broker's confirm.
            assert publisher._producer is not None
            assert publisher._producer.channel._confirm_selected  # type: ignore[union-attr]
        proxy.cut()  # the broker "restarts": the held connection is closed under it
        proxy.restore()
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 2})
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 3})
    finally:
        publisher.close()
    taken = _messages(broker_url, f"{queue}-interactive")
    assert [m["kwargs"]["webhook_event_id"] for m in taken] == [1, 2, 3]
    assert {m["task"] for m in taken} == {jobs.PUSH_STAGE}
    assert _messages(broker_url, queue) == []  # nothing on the bulk queue


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_send_while_the_broker_is_unreachable_raises_and_the_next_one_arrives(
    broker_url, proxied
) -> None:
    proxy, url, queue = proxied
    publisher = _publisher(url, queue)
    try:
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 1})
        proxy.cut()
        with pytest.raises(BrokerUnavailableError, match="CONNECTOR_BROKER_URL"):
            publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 2})
        proxy.restore()
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 3})
    finally:
        publisher.close()
    taken = _messages(broker_url, f"{queue}-interactive")
    assert [m["kwargs"]["webhook_event_id"] for m in taken] == [1, 3]


def test_on_redis_the_publisher_holds_one_client_for_its_sends(redis_url) -> None:
    """kombu's own Redis channel builds a client per publish (its CPU is what the held
    transport saves); the held one reuses its client while the pool is the same."""
    queue = f"mlc-test-publish-{uuid.uuid4().hex[:10]}"
    publisher = _publisher(redis_url, queue)
    try:
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 1})
        connection = publisher._connection
        assert connection is not None and isinstance(connection.transport, HeldRedisTransport)
        channel: Any = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 2})
    finally:
        publisher.close()
    assert len(_messages(redis_url, f"{queue}-interactive")) == 2


def test_on_redis_the_publisher_sends_on_one_held_connection(redis_url) -> None:
    """Each LPUSH goes out on the channel's held connection (not a pool checkout per send);
    closing the publisher gives it back to the pool."""
    queue = f"mlc-test-publish-{uuid.uuid4().hex[:10]}"
    publisher = _publisher(redis_url, queue)
    try:
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 1})
        assert publisher._connection is not None
        channel: Any = publisher._connection.default_channel
        held = channel._held_connection
        assert held is not None
        publisher(jobs.PUSH_STAGE, {"tenant": "t1", "webhook_event_id": 2})
        assert channel._held_connection is held
        pool = channel.pool
    finally:
        publisher.close()
    assert channel._held_connection is None
    assert held in pool._available_connections
    taken = _messages(redis_url, f"{queue}-interactive")
    assert [m["kwargs"]["webhook_event_id"] for m in taken] == [1, 2]
