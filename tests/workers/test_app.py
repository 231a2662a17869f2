"""The Celery app's broker options: Redis gets a visibility timeout matched to short tasks and
a frequent scan for a dead worker's messages; RabbitMQ gets confirmed publishes."""

from __future__ import annotations

from connector.settings import Settings
from workers.app import UNACKED_RESTORE_INTERVAL_S, broker_transport_options, create_celery_app
from workers.base import MAX_COUNTDOWN_S


def test_a_redis_broker_redelivers_a_dead_workers_messages_after_the_visibility_timeout() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/1", broker_visibility_timeout_s=90)
    options = broker_transport_options(settings)
    assert options["visibility_timeout"] == 90
    # Scanned every few seconds (kombu's default: every 10th tick of 10 s).
    assert options["unacked_restore_interval"] == UNACKED_RESTORE_INTERVAL_S <= 10
    assert options["unacked_restore_throttle"] == 1
    app = create_celery_app(settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 90


def test_the_default_visibility_timeout_is_short_and_countdowns_stay_under_half_of_it() -> None:
    timeout = Settings().broker_visibility_timeout_s
    assert timeout <= 120
    assert timeout / 2 >= MAX_COUNTDOWN_S


def test_a_rabbitmq_broker_confirms_every_publish() -> None:
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert broker_transport_options(settings) == {"confirm_publish": True}


def test_the_in_memory_broker_takes_no_options() -> None:
    assert broker_transport_options(Settings(broker_url="memory://localhost/")) == {}
