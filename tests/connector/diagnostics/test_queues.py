"""Queue depth of Redis (redis, rediss, unix) and RabbitMQ brokers, a note for any other."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from connector.diagnostics.queues import queue_status


def _depth_gauge(queue: str) -> float:
    return REGISTRY.get_sample_value("mlc_queue_depth", {"queue": queue}) or 0.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
def test_queue_depth_reads_the_celery_lists_in_redis(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue, other = f"{redis_prefix}ml-connector", f"{redis_prefix}empty"
    client.rpush(queue, "m1", "m2", "m3")
    client.rpush(f"{queue}\x06\x169", "urgent")  # Celery's list for priority 9

    measured = queue_status(redis_url, [queue, other])

    assert measured.depths == {queue: 4, other: 0}
    assert measured.error is None and measured.note is None
    assert _depth_gauge(queue) == 4
    client.lpop(queue)
    queue_status(redis_url, [queue])
    assert _depth_gauge(queue) == 3


@pytest.mark.integration
def test_queue_depth_reads_the_ready_messages_in_rabbitmq(rabbitmq_url: str) -> None:
    import uuid

    from kombu import Connection, Queue

    queue, absent = f"mlc-test-depth-{uuid.uuid4().hex[:8]}", f"mlc-test-absent-{uuid.uuid4().hex}"
    with Connection(rabbitmq_url) as connection:
        declared = Queue(queue, auto_delete=False).bind(connection.default_channel)
        declared.declare()
        try:
            producer = connection.Producer()
            for number in range(3):
                producer.publish({"n": number}, routing_key=queue, retry=True)
            measured = queue_status(rabbitmq_url, [queue, absent])
            assert measured.depths == {queue: 3, absent: 0}, measured
            assert measured.error is None and measured.note is None
            assert _depth_gauge(queue) == 3
            assert "guest:guest" not in measured.broker
        finally:
            declared.delete()


def test_an_unreachable_rabbitmq_broker_is_a_clear_error_without_its_password() -> None:
    port = _closed_port()
    measured = queue_status(f"amqp://guest:hunter22@127.0.0.1:{port}//", ["q"], timeout_s=1)
    assert measured.depths is None and measured.error is not None
    assert measured.error.startswith("broker unreachable at amqp://")
    assert "hunter22" not in measured.error + measured.broker


@pytest.mark.parametrize("broker", ["memory://localhost/", "sqs://"])
def test_other_brokers_get_a_note_instead_of_depths(broker: str) -> None:
    measured = queue_status(broker, ["ml-connector"])
    assert measured.depths is None and measured.error is None
    assert measured.note == "queue depth is measured for Redis and RabbitMQ brokers only"


def test_memory_broker_is_shown_as_configured() -> None:
    assert queue_status("memory://localhost/", ["q"]).broker == "memory://localhost/"


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_an_unreachable_redis_broker_is_a_clear_error_without_its_password(scheme: str) -> None:
    port = _closed_port()
    measured = queue_status(f"{scheme}://:hunter22@127.0.0.1:{port}/0", ["q"], timeout_s=1)

    assert measured.depths is None and measured.note is None
    assert measured.broker == f"{scheme}://127.0.0.1:{port}/0"
    assert measured.error is not None
    assert measured.error.startswith(f"broker unreachable at {scheme}://127.0.0.1:{port}/0: ")
    assert "CONNECTOR_BROKER_URL" in measured.error
    assert "hunter22" not in measured.error + measured.broker


def test_a_redis_socket_broker_is_measured_too(tmp_path: Path) -> None:
    measured = queue_status(f"unix://{tmp_path / 'no-redis.sock'}", ["q"], timeout_s=1)
    # Measured (and found absent), not waved off as a broker of another kind.
    assert measured.note is None
    assert measured.error is not None and "broker unreachable" in measured.error
