"""A bare Celery task for the throughput benchmark: the broker's and Celery's own cost per task.

Registered on the workers' own Celery app (same broker, serializer, acks_late, prefetch and
events), with Celery's plain Task as its base: none of ConnectorTask's wrapping. Its one
piece of work is an INCR of a Redis counter, so the benchmark sees when every task ran.
"""

from __future__ import annotations

from functools import cache

import redis
from celery import Task

from connector.settings import get_settings
from workers.app import celery_app

NOOP = "bench.noop"


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url or "redis://127.0.0.1:6379/0")


@celery_app.task(name=NOOP, base=Task)
def noop(counter: str) -> None:
    _redis().incr(counter)
