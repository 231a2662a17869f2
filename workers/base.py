"""The task base classes: what happens around every task body (log context, retries, metrics).

A task body only calls the library; the library raises and never counts. Around it
(pypi/warehouse's WarehouseTask and sentry's task base are the models):

- every run first picks up configuration changes (a cheap check every few seconds,
  connector.live_config), so a changed tenants file or credential needs no restart;
- every run is inside a log context naming its task, tenant, record and run; an interactive
  job's run (connector.jobs.is_interactive) is inside `interactive_work()`, so it may spend
  the daily reserve that bulk work leaves;
- a transient error (`connector.errors.is_transient`) is retried with the one retry policy
  (full-jitter exponential, `connector.http.RetryPolicy`), never sooner than the error's
  `retry_after_s` (the remote's Retry-After, the limiter's wait), at most MAX_RETRIES times;
  once none is left, the "retrying" audit row the attempt left (`audit_id`) is marked
  failed and the task ends "failed", for `replay` to run again;
- no countdown exceeds MAX_COUNTDOWN_S, half the broker's visibility timeout (a longer one
  would be redelivered while it sleeps); a wait longer than that (a daily budget spent) is
  not slept in a message: the row is marked deferred, saying why, and the next scheduled
  plan queues the record again;
- a lost connection to the database, Redis or the broker is transient too: the attempt is
  retried, and once no retry is left it leaves a failed row (one the attempt wrote, else one
  written here from the task's arguments);
- a message is never acknowledged as done while its outcome is unrecorded: when the retry
  cannot be published (the broker is down) or the failed row cannot be written (the
  database is down), the message is rejected back to the queue (`Reject(requeue=True)`);
- a record the dispatcher released retries through its stored work item instead of a
  countdown message (RecordSyncTask);
- each run that ends is observed once, with its outcome; a run that retries has none yet.

Jobs are sent with keyword arguments (connector.jobs), which is what these read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from connector import jobs, metrics
from connector.errors import is_connection_loss, is_transient, retry_after_s
from connector.http import RetryPolicy
from connector.logs import log_context
from connector.pipedrive.client import BURST_WINDOW_S
from connector.ratelimit import interactive_work
from connector.storage.audit import (
    DEFERRED,
    FAILED,
    IFS_TO_PIPEDRIVE,
    PIPEDRIVE_TO_IFS,
    Attempt,
    AuditLog,
)
from connector.storage.models import utcnow
from workers.app import VISIBILITY_TIMEOUT_S
from workers.runtime import get_runtime

if TYPE_CHECKING:
    from connector.storage.work_items import WorkItems

log = logging.getLogger(__name__)

MAX_RETRIES = 10
# The longest a released record's task sleeps for rate-limit tokens (the dispatcher released
# it within budget; when they are not there, it is handed back instead).
DISPATCHED_TOKEN_WAIT_S = 0.5
# Once it has been granted some tokens, it waits for the rest when they come within one burst
# window: handed back, its next attempt would spend again what this one spent.
DISPATCHED_STARTED_WAIT_S = BURST_WINDOW_S
MAX_COUNTDOWN_S = VISIBILITY_TIMEOUT_S / 2
# Task-level waits are longer than HTTP-level ones: these follow a failure that the HTTP
# policy already retried, or a limiter that said how long to wait.
TASK_RETRY_POLICY = RetryPolicy(max_tries=MAX_RETRIES + 1, base_s=2.0, cap_s=60.0)
# A message rejected back to its queue comes back at once: a short pause keeps a worker that
# cannot record anything from spinning on it.
REQUEUE_PAUSE_S = 2.0
# What a failed row written here keeps for `replay` (what the library's own rows keep).
REPLAY_ARGUMENTS = ("tenant", "key", "webhook_event_id", "entity", "full")


class ConnectorTask(Task):
    max_retries = MAX_RETRIES
    # False for tasks whose next scheduled run is their retry.
    transient_retries = True

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, …"""
        return (self.request.retries or 0) + 1

    @property
    def redelivered(self) -> bool:
        """The broker delivered this message before (a consumer died or gave it back unacked):
        RabbitMQ says so, and kombu's Redis transport when it restores an unacked message."""
        return bool((self.request.delivery_info or {}).get("redelivered"))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with log_context(
            task=self.name,
            tenant=kwargs.get("tenant"),
            record_key=kwargs.get("key") or kwargs.get("webhook_event_id"),
            correlation_id=kwargs.get("run_id") or getattr(self.request, "id", None),
        ):
            started = time.monotonic()
            # Interactive work (connector.jobs.is_interactive: a stage push, a replay of one
            # record) may spend the daily reserve that bulk work leaves.
            interactive = jobs.is_interactive(self.name, kwargs)
            try:
                with interactive_work() if interactive else nullcontext():
                    # Inside the try: it may read the database, which may be down.
                    get_runtime().refresh_if_stale()
                    outcome = super().__call__(*args, **kwargs)
            except (Retry, Reject, Ignore):
                raise
            except Exception as error:
                if not (self.transient_retries and is_transient(error)):
                    self.observe(kwargs, FAILED, time.monotonic() - started)
                    raise
                outcome = self.retry_transient(error)
            self.observe(kwargs, outcome, time.monotonic() - started)
            return outcome

    def retry_transient(
        self,
        error: Exception,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Run this task again later because of a transient `error` (raises Celery's Retry).

        Returns the run's outcome when it is not retried: "deferred" when the wait is too
        long to sleep in a message, "failed" when no retry is left, after marking the
        attempt's "retrying" audit row (`audit_id`, else the error's) so. `kwargs` replaces
        the task's arguments for the retry (a plan retries only what it has still to plan).
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
                self._record(lambda audit: audit.mark_deferred(row_id, reason))
            return DEFERRED
        if retries < self.max_retries:
            countdown = min(TASK_RETRY_POLICY.delay_s(retries, wait), MAX_COUNTDOWN_S)
            if is_connection_loss(error):
                self._log_connection_loss(error, retries + 1, countdown)
            try:
                raise self.retry(exc=error, countdown=countdown, kwargs=kwargs)
            except Reject as unsent:
                # Celery drops the message (Reject without requeue) when it cannot publish
                # the retry: keep it instead.
                self.requeue(f"cannot queue the retry: {unsent}")
        return self.fail(error, audit_id=audit_id, kwargs=kwargs)

    def fail(
        self,
        error: Exception,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        """End the run "failed" once no retry is left: its "retrying" row (`audit_id`, else
        the error's) is marked failed, or a failed row is written from the arguments."""
        log.warning("%s: no retry left after %d: %s", self.name, self.attempt - 1, error)
        row_id = audit_id if audit_id is not None else getattr(error, "audit_id", None)
        if row_id is not None:
            self._record(lambda audit: audit.mark_failed(row_id))
            return FAILED
        failure = self.failure_row(dict(kwargs or self.request.kwargs or {}), error)
        if failure is not None:
            self._record(lambda audit: audit.write(failure))
        return FAILED

    def _log_connection_loss(self, error: Exception, retry: int, delay_s: float) -> None:
        # The library logs remote errors; an outage of our own services is said here.
        log.warning(
            "%s: connection lost, retry %d in %.1fs: %s: %s",
            self.name,
            retry,
            delay_s,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )

    def failure_row(self, kwargs: dict[str, Any], error: Exception) -> Attempt | None:
        """The failed row of a run that ends without one of its own (the error came before the
        library could write any, e.g. the database was down); None for a task without a
        tenant (its caller sees the failure)."""
        tenant = kwargs.get("tenant")
        if not isinstance(tenant, str):
            return None
        key = kwargs.get("key") or kwargs.get("webhook_event_id") or "*"
        return Attempt(
            tenant=tenant,
            direction=IFS_TO_PIPEDRIVE,
            entity=str(kwargs.get("entity") or "*"),
            record_key=str(key),
            operation="task",
            status=FAILED,
            error=f"{type(error).__name__}: {error}",
            replay_task=self.name,
            replay_args={name: kwargs[name] for name in REPLAY_ARGUMENTS if name in kwargs},
            correlation_id=kwargs.get("run_id"),
            attempt=self.attempt,
        )

    def _record(self, write: Callable[[AuditLog], object]) -> None:
        # The outcome must be stored before the message is acknowledged: a database that
        # cannot take it sends the message back to the queue.
        self._stored(lambda: write(AuditLog(get_runtime().database)))

    def _stored(self, write: Callable[[], object]) -> None:
        try:
            write()
        except Exception as error:
            if not is_connection_loss(error):
                raise
            self.requeue(f"cannot record the outcome: {type(error).__name__}: {error}")

    def requeue(self, reason: str) -> None:
        """Give the message back to the broker, unacknowledged as done (raises Reject)."""
        log.warning("%s: message back to the queue: %s", self.name, reason)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(reason, requeue=True)

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

    def failure_row(self, kwargs: dict[str, Any], error: Exception) -> Attempt | None:
        row = super().failure_row(kwargs, error)
        if row is not None:
            row.entity, row.operation = self.entity, "sync"
        return row

    def retry_transient(
        self,
        error: Exception,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        item = (self.request.kwargs or {}).get("work_item")
        if item is None:
            return super().retry_transient(error, audit_id=audit_id, kwargs=kwargs)
        item_id = int(item)
        wait = retry_after_s(error)
        retries = self.attempt - 1
        if wait is not None and wait > MAX_COUNTDOWN_S:
            # A spent day: deferred with its reason, as a queued task is (ConnectorTask).
            outcome = super().retry_transient(error, audit_id=audit_id)
            self._record_item(lambda items: items.finish(item_id))
            return outcome
        if _only_tokens_missing(error):
            delay, attempts = wait or 0.0, retries  # the dispatcher's pacing, not a failure
        elif retries < self.max_retries:
            delay, attempts = TASK_RETRY_POLICY.delay_s(retries, wait), retries + 1
            if is_connection_loss(error):
                self._log_connection_loss(error, retries + 1, delay)
        else:
            outcome = self.fail(error, audit_id=audit_id, kwargs=kwargs)
            self._record_item(lambda items: items.finish(item_id))
            return outcome
        not_before = utcnow() + timedelta(seconds=delay)
        self._record_item(
            lambda items: items.give_back(item_id, not_before=not_before, attempts=attempts)
        )
        # Acknowledged and done with: the stored item is the retry.
        raise Ignore()

    def _record_item(self, write: Callable[[WorkItems], object]) -> None:
        # As an outcome (_record): a database that cannot take the item's change sends the
        # message back to the queue, and its next run decides again.
        from connector.storage.work_items import WorkItems

        self._stored(lambda: write(WorkItems(get_runtime().database)))

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

    def failure_row(self, kwargs: dict[str, Any], error: Exception) -> Attempt | None:
        row = super().failure_row(kwargs, error)
        if row is not None:
            row.direction, row.entity, row.operation = PIPEDRIVE_TO_IFS, "order", "push_stage"
            row.record_key = f"webhook_event:{row.record_key}"
        return row

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        metrics.observe_stage_push(str(kwargs.get("tenant")), str(outcome), seconds)
