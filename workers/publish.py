"""A publisher for a caller that waits on each send (the webhook receiver): one broker
connection and producer held per process, instead of Celery's per-send pool checkout,
kombu's retry wrapper and a queue declaration per message.

What a send still does: Celery builds the task message (protocol 2, the routes of
workers.app, so a stage push goes to the interactive queue), and kombu publishes it on the
held channel; on RabbitMQ the channel confirms each publish (broker_transport_options), so a
send that returned is stored by the broker. A send is not retried over time: its caller has
stored what the job is for first (a webhook event), answers 503 when the send fails, and the
sweeper of unfinished events queues it again. A connection that broke while it was held
(broker restarted, idle connection closed) is replaced and the send tried once more on the
new one; a duplicate that this may cause is harmless, as every job is idempotent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import Connection, Producer
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as json_dumps
from kombu.utils.url import maybe_sanitize_url
from kombu.utils.uuid import uuid

from connector.errors import BrokerUnavailableError


def broker_unavailable(app: Celery, job: str, error: BaseException) -> BrokerUnavailableError:
    """The error of a send that could not reach the broker, naming the setting."""
    # Celery masks the password the same way in its own banner.
    url = maybe_sanitize_url(str(app.conf.broker_url))
    return BrokerUnavailableError(
        f"cannot queue {job}: the broker {url} (CONNECTOR_BROKER_URL, else "
        f"CONNECTOR_REDIS_URL) does not answer: {error}"
    )


class _HeldClientChannel(kombu_redis.Channel):
    """kombu's Redis channel with one client object for its commands: kombu builds a new
    `redis.Redis` on the same connection pool for every publish, which costs about 0.05 ms
    of CPU (its ~170 response callbacks), a third of a send. The client only borrows a pooled
    connection for each command, as the per-command clients do, so holding it changes
    nothing else (redis-py's clients are thread-safe). A publish (`_put`) goes further: its
    LPUSH is written to one pooled connection the channel holds (HeldPublisher sends one
    at a time)."""

    _held_client: Any = None
    _held_connection: Any = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        """One LPUSH on a connection held by the channel, sent and read directly: the client's
        command path (its retry wrapper, the pool's checkout and release with their fork and
        deprecation checks, the response callbacks) cost more CPU than the command itself.
        A failed command drops the connection and raises, and HeldPublisher sends once more
        on a new one, as before. Batches and queues with an expiry take kombu's own way."""
        channel: Any = self  # kombu's Channel is untyped where its Redis attributes are
        if kwargs.get("_publish_batch") is not None or (
            channel._expires and queue in channel._expires
        ):
            super()._put(queue, message, **kwargs)
            return
        key = channel._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        connection = self._held_connection
        if connection is None:
            connection = self._held_connection = self.pool.get_connection()
        try:
            connection.send_command("LPUSH", key, json_dumps(message))
            connection.read_response()
        except BaseException:
            self._drop_held_connection(broken=True)
            raise

    def close(self) -> None:
        self._drop_held_connection()
        super().close()

    def _drop_held_connection(self, *, broken: bool = False) -> None:
        connection, self._held_connection = self._held_connection, None
        if connection is None:
            return
        with suppress(Exception):
            if broken:
                connection.disconnect()
            self.pool.release(connection)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        held = self._held_client
        if held is None or held.connection_pool is not self.pool:
            held = self._held_client = self._create_client()  # type: ignore[attr-defined]
        yield held


class HeldRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport (same URLs and options), with the channel above."""

    Channel = _HeldClientChannel


HELD_REDIS_TRANSPORT = f"{__name__}:HeldRedisTransport"


class HeldPublisher:
    """`Enqueue` (connector.jobs) through one held connection of `app`; thread-safe (one send
    at a time per process, as a kombu channel is not shared between threads)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._declared: set[str] = set()  # queues declared on the held connection
        self._origin_of: tuple[int, str] = (0, "")  # (pid, origin): see _origin
        probe = app.connection_for_write()  # not connected: its transport's error classes
        self._broker_errors: tuple[type[BaseException], ...] = (
            OSError,
            OperationalError,
            *probe.recoverable_connection_errors,
            *probe.recoverable_channel_errors,
            *probe.connection_errors,
        )
        probe.release()

    def __call__(self, job: str, kwargs: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._send(job, kwargs)
                return
            except Exception as error:
                self.close()
                if not self._recoverable(error):
                    raise
            # The held connection broke (or the connect failed): once more on a new one.
            try:
                self._send(job, kwargs)
            except Exception as error:
                self.close()
                if self._recoverable(error):
                    raise broker_unavailable(self.app, job, error) from error
                raise

    def close(self) -> None:
        """Release the held connection (the next send opens a new one)."""
        connection, self._connection, self._producer = self._connection, None, None
        self._declared.clear()
        if connection is not None:
            # A broken connection may fail to close: it is dropped anyway.
            with suppress(Exception):
                connection.release()

    def _send(self, job: str, kwargs: dict[str, Any]) -> None:
        producer = self._producer if self._producer is not None else self._connect()
        route = self.app.amqp.router.route({}, job, (), kwargs)
        queue = route["queue"]
        if queue.name not in self._declared:
            # Once per connection (kombu would copy and bind the queue for every message):
            # RabbitMQ drops a message routed to a queue that does not exist yet.
            producer.maybe_declare(queue)
            self._declared.add(queue.name)
        message = self.app.amqp.create_task_message(
            uuid(),
            job,
            (),
            kwargs,
            # Celery's saferepr of the arguments costs more than the rest of the message;
            # the kwargs of a job are a few ids, whose repr is short.
            argsrepr="()",
            kwargsrepr=repr(kwargs),
            ignore_result=self.app.conf.task_ignore_result,
            create_sent_event=False,
            origin=self._origin(),
        )
        self.app.amqp.send_task_message(
            producer, job, message, queue=queue, retry=False, declare=[]
        )

    def _origin(self) -> str:
        """The message's origin field, as Celery names it ("gen<pid>@<host>"), kept per
        process: Celery asks the system for the host name on every message otherwise."""
        pid = os.getpid()
        if self._origin_of[0] != pid:
            self._origin_of = (pid, anon_nodename())
        return self._origin_of[1]

    def _connect(self) -> Producer:
        url = str(self.app.conf.broker_write_url or self.app.conf.broker_url)
        redis_url = url.startswith(("redis://", "rediss://"))
        connection = self.app.connection_for_write(
            transport=HELD_REDIS_TRANSPORT if redis_url else None
        )
        try:
            # No retry here: a failed connect is tried once more by the caller of _send, at
            # once; then the caller answers 503 (no wait while Pipedrive waits).
            connection.ensure_connection(max_retries=0, interval_start=0)
            producer = self.app.amqp.Producer(connection)
        except Exception:
            connection.release()
            raise
        self._connection, self._producer = connection, producer
        return producer

    def _recoverable(self, error: BaseException) -> bool:
        """Whether `error` says the broker or the connection to it failed (not our message)."""
        return isinstance(error, self._broker_errors)
