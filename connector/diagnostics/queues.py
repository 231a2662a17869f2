"""Depth of the workers' Celery queues in the broker: `status` shows it, /metrics exports it.

Measured for brokers that are Redis (schemes redis://, rediss://, and unix:// for a Redis
socket) or RabbitMQ (amqp://, amqps://: the messages ready in each queue, as a passive
declare reports them); any other broker (memory://, sqs://, …) gets a note instead of depths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis as redis_lib
from redis.exceptions import RedisError

from connector.diagnostics.urls import public_url
from connector.metrics import set_queue_depth
from connector.settings import is_amqp

MEASURED_SCHEMES = ("redis://", "rediss://", "unix://")
# Celery's Redis transport keeps priorities 3, 6 and 9 in lists named queue + sep + priority.
CELERY_PRIORITY_SEP = "\x06\x16"
CELERY_PRIORITY_STEPS = ("3", "6", "9")


class RedisLists(Protocol):
    def llen(self, name: str) -> Any: ...


@dataclass
class QueueStatus:
    """The broker as `status` sees it: queue depths when it is Redis, else why not."""

    broker: str
    depths: dict[str, int] | None = None
    error: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def celery_queue_depths(client: RedisLists, queue_names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue: its Redis list plus one list per priority step."""
    depths: dict[str, int] = {}
    for queue in queue_names:
        lists = [queue, *(f"{queue}{CELERY_PRIORITY_SEP}{step}" for step in CELERY_PRIORITY_STEPS)]
        depths[queue] = sum(int(client.llen(name)) for name in lists)
    return depths


def queue_status(
    broker_url: str, queue_names: Iterable[str], *, timeout_s: float = 3.0
) -> QueueStatus:
    """Measure the queues in the broker and set mlc_queue_depth; a broker that does not
    answer within `timeout_s` is a clear error in the answer, not an exception."""
    # memory:// has no host to keep: shown as configured.
    in_memory = broker_url.startswith("memory")
    shown = broker_url if in_memory or "://" not in broker_url else public_url(broker_url)
    result = QueueStatus(shown)
    if is_amqp(broker_url):
        try:
            result.depths = amqp_queue_depths(broker_url, queue_names, timeout_s)
        except Exception as error:  # kombu and amqp raise many kinds for "not reachable"
            result.error = (
                f"broker unreachable at {shown}: {error} "
                "(check CONNECTOR_BROKER_URL and that RabbitMQ is running)"
            )
        for queue, depth in (result.depths or {}).items():
            set_queue_depth(queue, depth)
        return result
    if not broker_url.startswith(MEASURED_SCHEMES):
        result.note = "queue depth is measured for Redis and RabbitMQ brokers only"
        return result
    client = redis_lib.Redis.from_url(
        broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        result.depths = celery_queue_depths(client, queue_names)
    except RedisError as error:
        result.error = (
            f"broker unreachable at {shown}: {error} "
            "(check CONNECTOR_BROKER_URL and that Redis is running)"
        )
    finally:
        client.close()
    for queue, depth in (result.depths or {}).items():
        set_queue_depth(queue, depth)
    return result


def amqp_queue_depths(
    broker_url: str, queue_names: Iterable[str], timeout_s: float
) -> dict[str, int]:
    """Messages ready in each RabbitMQ queue; a queue not declared yet holds none."""
    from amqp.exceptions import NotFound
    from kombu import Connection, Queue

    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=timeout_s) as connection:
        connection.ensure_connection(max_retries=1)
        for queue in queue_names:
            # A passive declare of a missing queue closes its channel: one channel each.
            channel = connection.channel()
            try:
                declared = Queue(queue, channel=channel).queue_declare(passive=True)
                # kombu's stubs type the answer as a name; py-amqp answers queue_declare_ok_t.
                depths[queue] = int(declared.message_count)  # type: ignore[union-attr]
            except NotFound:
                depths[queue] = 0
            finally:
                with contextlib.suppress(Exception):
                    connection.maybe_close_channel(channel)
    return depths
