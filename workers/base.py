"""The task base classes: what happens around every task body (log context, retries, metrics).

A task body only calls the library; the library raises and never counts. Around it
(pypi/warehouse's WarehouseTask and sentry's task base are the models):

- every run first picks up configuration changes (a cheap check every few seconds,
  connector.live_config), so a changed tenants file or credential needs no restart;
- every run is inside a log context naming its task, tenant, record and run;
- a transient error (`connector.errors.is_transient`) is retried with the one retry policy
  (full-jitter exponential, `connector.http.RetryPolicy`), never sooner than the error's
  `retry_after_s` (the remote's Retry-After, the limiter's wait), at most MAX_RETRIES times;
  once none is left, the "retrying" audit row the attempt left (`audit_id`) is marked
  failed and the task ends "failed", for `replay` to run again;
- no countdown exceeds MAX_COUNTDOWN_S, half the broker's visibility timeout (a longer one
  would be redelivered while it sleeps); a wait longer than that (a daily budget spent) is
  not slept in a message: the row is marked deferred, saying why, and the next scheduled
  plan queues the record again;
- each run that ends is observed once, with its outcome; a run that retries has none yet.

Jobs are sent with keyword arguments (connector.jobs), which is what these read.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry

from connector import metrics
from connector.errors import is_transient, retry_after_s
from connector.http import RetryPolicy
from connector.logs import log_context
from connector.storage.audit import FAILED, AuditLog
from connector.storage.models import utcnow
from workers.app import VISIBILITY_TIMEOUT_S
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

MAX_RETRIES = 10
# The longest a released record's task sleeps for rate-limit tokens (the dispatcher released
# it within budget; when they are not there, it is handed back instead).
DISPATCHED_TOKEN_WAIT_S = 0.5
MAX_COUNTDOWN_S = VISIBILITY_TIMEOUT_S / 2
# Task-level waits are longer than HTTP-level ones: these follow a failure that the HTTP
# policy already retried, or a limiter that said how long to wait.
TASK_RETRY_POLICY = RetryPolicy(max_tries=MAX_RETRIES + 1, base_s=2.0, cap_s=60.0)


class ConnectorTask(Task):
    max_retries = MAX_RETRIES
    # False for tasks whose next scheduled run is their retry.
    transient_retries = True

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, …"""
        return (self.request.retries or 0) + 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        get_runtime().refresh_if_stale()
        with log_context(
            task=self.name,
            tenant=kwargs.get("tenant"),
            record_key=kwargs.get("key") or kwargs.get("webhook_event_id"),
            correlation_id=kwargs.get("run_id") or getattr(self.request, "id", None),
        ):
            started = time.monotonic()
            try:
                outcome = super().__call__(*args, **kwargs)
            except Retry:
                raise
            except Exception as error:
                if not (self.transient_retries and is_transient(error)):
                    self.observe(kwargs, FAILED, time.monotonic() - started)
                    raise
                self.retry_transient(error)
                outcome = FAILED
            self.observe(kwargs, outcome, time.monotonic() - started)
            return outcome

    def retry_transient(
        self,
        error: Exception,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Run this task again later because of a transient `error` (raises Celery's Retry).

        Returns only when no retry is left, after marking the attempt's "retrying" audit row
        (`audit_id`, else the error's) failed. `kwargs` replaces the task's arguments for the
        retry (a plan retries only what it has still to plan).
        """
        retries = self.request.retries or 0
        row_id = audit_id if audit_id is not None else getattr(error, "audit_id", None)
        wait = retry_after_s(error)
        if wait is not None and wait > MAX_COUNTDOWN_S:
            reason = (
                f"deferred: the wait of {wait:.0f}s is longer than a queued task may sleep "
                f"({MAX_COUNTDOWN_S:.0f}s); the next scheduled plan syncs the record again"
            )
            log.warning("%s: %s: %s", self.name, reason, error)
            if row_id is not None:
                AuditLog(get_runtime().database).mark_deferred(row_id, reason)
            return
        if retries < self.max_retries:
            countdown = min(TASK_RETRY_POLICY.delay_s(retries, wait), MAX_COUNTDOWN_S)
            raise self.retry(exc=error, countdown=countdown, kwargs=kwargs)
        log.warning("%s: no retry left after %d: %s", self.name, retries, error)
        if row_id is not None:
            AuditLog(get_runtime().database).mark_failed(row_id)

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        """Record the metrics of one run that ended with `outcome`; none by default."""


class RecordSyncTask(ConnectorTask):
    """Upserts one IFS record of `entity`; counts it in mlc_records_synced_total.

    A record the dispatcher released (kwargs `work_item`, `attempt`) is retried through its
    stored item, not a countdown message: a transient ending gives the item back with the
    retry policy's delay (a limiter's wait alone, uncounted, when only tokens were missing),
    and the dispatcher releases it again when it is due and the budget has room.
    """

    entity = ""  # set by the task decorator (customer, order)

    @property
    def attempt(self) -> int:
        given = (self.request.kwargs or {}).get("attempt")
        return int(given) if given else super().attempt

    def retry_transient(
        self,
        error: Exception,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        item = (self.request.kwargs or {}).get("work_item")
        if item is None:
            super().retry_transient(error, audit_id=audit_id, kwargs=kwargs)
            return
        from connector.storage.work_items import WorkItems

        items = WorkItems(get_runtime().database)
        row_id = audit_id if audit_id is not None else getattr(error, "audit_id", None)
        wait = retry_after_s(error)
        retries = self.attempt - 1
        if wait is not None and wait > MAX_COUNTDOWN_S:
            # A spent day: deferred with its reason, as a queued task is (ConnectorTask).
            super().retry_transient(error, audit_id=audit_id)
            items.finish(int(item))
            return
        if _only_tokens_missing(error):
            delay, attempts = wait or 0.0, retries  # the dispatcher's pacing, not a failure
        elif retries < self.max_retries:
            delay, attempts = TASK_RETRY_POLICY.delay_s(retries, wait), retries + 1
        else:
            log.warning("%s: no retry left after %d: %s", self.name, retries, error)
            if row_id is not None:
                AuditLog(get_runtime().database).mark_failed(row_id)
            items.finish(int(item))
            return
        not_before = utcnow() + timedelta(seconds=delay)
        items.give_back(int(item), not_before=not_before, attempts=attempts)
        # Acknowledged and done with: the stored item is the retry.
        raise Ignore()

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        metrics.record_sync(str(kwargs.get("tenant")), self.entity, str(outcome))


def _only_tokens_missing(error: BaseException) -> bool:
    """The attempt stopped because our own limiter had no tokens within the short wait."""
    from connector.ratelimit import RateLimited

    # The engine wraps it (a record's parent synced first wraps it twice): follow the causes.
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, RateLimited):
            return True
        cause = cause.__cause__
    return False


class StagePushTask(ConnectorTask):
    """Applies one deal stage change to IFS; observes mlc_stage_push_seconds once per run."""

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        metrics.observe_stage_push(str(kwargs.get("tenant")), str(outcome), seconds)
