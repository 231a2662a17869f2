"""Queue depth of Redis brokers (redis, rediss, unix) and a note for any other broker."""

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


@pytest.mark.parametrize(
    "broker", ["memory://localhost/", "amqp://guest:guest@127.0.0.1:5672//", "sqs://"]
)
def test_other_brokers_get_a_note_instead_of_depths(broker: str) -> None:
    measured = queue_status(broker, ["ml-connector"])
    assert measured.depths is None and measured.error is None
    assert measured.note == "queue depth is measured for Redis brokers only"
    assert "guest:guest" not in measured.broker


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
