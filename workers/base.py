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
- several released records of one tenant in one message (RecordBatchTask) end each on its
  own, as a lone record's task would: one that fails or retries never fails or repeats the
  others;
- a queued task and a released record decide what a transient error makes of them in one
  place (`transient_end`: defer, retry, fail);
- each run that ends is observed once, with its outcome; a run that retries has none yet.

Jobs are sent with keyword arguments (connector.jobs), which is what these read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from connector import jobs, metrics
from connector.errors import is_connection_loss, is_transient, retry_after_s, summary
from connector.http import RetryPolicy
from connector.logs import log_context
from connector.pipedrive.client import BURST_WINDOW_S
from connector.ratelimit import interactive_work
from connector.storage.audit import (
    DEFERRED,
    FAILED,
    IFS_TO_PIPEDRIVE,
    PIPEDRIVE_TO_IFS,
    RETRYING,
    Attempt,
    AuditLog,
)
from connector.storage.models import utcnow
from connector.sync import JOB_FOR_ENTITY
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
ENTITY_FOR_JOB = {job: entity for entity, job in JOB_FOR_ENTITY.items()}


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
        end = transient_end(error, retries, self.max_retries)
        if end.action is DEFER:
            return self.defer(error, audit_id=audit_id)
        if end.action is RETRY:
            countdown = min(end.delay_s, MAX_COUNTDOWN_S)
            if is_connection_loss(error):
                self._log_connection_loss(error, retries + 1, countdown)
            try:
                raise self.retry(exc=error, countdown=countdown, kwargs=kwargs)
            except Reject as unsent:
                # Celery drops the message (Reject without requeue) when it cannot publish
                # the retry: keep it instead.
                self.requeue(f"cannot queue the retry: {unsent}")
        return self.fail(error, audit_id=audit_id, kwargs=kwargs)

    def defer(self, error: Exception, *, audit_id: int | None = None) -> str:
        """End the run "deferred": its wait is too long to sleep in a message (a spent daily
        budget); its "retrying" row (`audit_id`, else the error's) says why, and the next
        scheduled plan queues the record again."""
        wait = retry_after_s(error) or 0.0
        reason = (
            f"deferred: the wait of {wait:.0f}s is longer than a queued task may sleep "
            f"({MAX_COUNTDOWN_S:.0f}s); the next scheduled plan syncs the record again"
        )
        log.warning("%s: %s: %s", self.name, reason, error)
        row_id = audit_id if audit_id is not None else getattr(error, "audit_id", None)
        if row_id is not None:
            self._record(lambda audit: audit.mark_deferred(row_id, reason))
        return DEFERRED

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
            "%s: connection lost, retry %d in %.1fs: %s",
            self.name,
            retry,
            delay_s,
            summary(error),
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
            # A record of a batch (RecordBatchTask) names its own job and attempt.
            job = str(kwargs.get("job") or self.name)
            row.entity, row.operation = ENTITY_FOR_JOB.get(job, self.entity), "sync"
            row.replay_task, row.attempt = job, int(kwargs.get("attempt") or row.attempt)
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
        outcome = self.end_item(error, int(item), self.attempt, audit_id=audit_id, kwargs=kwargs)
        if outcome is None:
            # Acknowledged and done with: the stored item is the retry.
            raise Ignore()
        return outcome

    def end_item(
        self,
        error: Exception,
        item_id: int,
        attempt: int,
        *,
        audit_id: int | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> str | None:
        """End the released record of `item_id`, whose attempt `attempt` met the transient
        `error`: deferred or failed (its outcome; the item is finished), or given back to
        the store to run again when due (None)."""
        retries = attempt - 1
        end = transient_end(error, retries, self.max_retries, paced=True)
        if end.action is RETRY:
            if end.counted and is_connection_loss(error):
                self._log_connection_loss(error, retries + 1, end.delay_s)
            self.give_back(item_id, end.delay_s, retries + 1 if end.counted else retries)
            return None
        if end.action is DEFER:
            outcome = self.defer(error, audit_id=audit_id)
        else:
            outcome = self.fail(error, audit_id=audit_id, kwargs=kwargs)
        self._record_item(lambda items: items.finish(item_id))
        return outcome

    def give_back(self, item_id: int, delay_s: float, attempts: int) -> None:
        """Hand the released item back to the store, due again in `delay_s`."""
        not_before = utcnow() + timedelta(seconds=delay_s)
        self._record_item(
            lambda items: items.give_back(item_id, not_before=not_before, attempts=attempts)
        )

    def _record_item(self, write: Callable[[WorkItems], object]) -> None:
        # As an outcome (_record): a database that cannot take the item's change sends the
        # message back to the queue, and its next run decides again.
        from connector.storage.work_items import WorkItems

        self._stored(lambda: write(WorkItems(get_runtime().database)))

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        metrics.record_sync(str(kwargs.get("tenant")), self.entity, str(outcome))


class RecordBatchTask(RecordSyncTask):
    """Runs several released records of one tenant (connector.jobs.SYNC_RECORDS), one by one.

    Each record is what a lone record's task would be: its own lock, audit row, work item
    end and retries (`end_item`), counted on its own in mlc_records_synced_total; one that
    fails or retries neither fails nor repeats the others. What the records share is the
    message, the configuration check and the tenant's sync. A record that did not get its
    tokens within the short wait gives back the records after it too, unrun: the tenant's
    budget is spent for now, and a batch never waits it out.

    A message that comes again (redelivered after its worker died, or sent back because an
    outcome could not be stored) runs only its records still released: the others ended.
    """

    def run_records(
        self,
        tenant: str,
        records: list[dict[str, Any]],
        run_one: Callable[[str, str, int, int, dict[str, Any]], str],
    ) -> dict[str, int]:
        """Run each record with `run_one(entity, key, work_item, attempt, options)`; the
        number of records per outcome (those given back: "retrying")."""
        from connector.storage.work_items import WorkItems

        items = [int(record["work_item"]) for record in records]
        pending = WorkItems(get_runtime().database).still_released(items)
        outcomes: dict[str, int] = {}
        paced_s: float | None = None
        for record in records:
            item, attempt = int(record["work_item"]), int(record.get("attempt") or 1)
            if item not in pending:
                continue
            entity, key = ENTITY_FOR_JOB[str(record["job"])], str(record["key"])
            options = {n: v for n, v in record.items() if n not in _NOT_OPTIONS}
            if paced_s is not None:
                self.give_back(item, paced_s, attempt - 1)
                outcome: str | None = None
            else:
                with log_context(record_key=key, correlation_id=record.get("run_id")):
                    outcome, paced_s = self._run_one(
                        run_one, entity, key, item, attempt, record, options
                    )
            name = outcome or RETRYING
            outcomes[name] = outcomes.get(name, 0) + 1
            if outcome is not None:
                metrics.record_sync(tenant, entity, outcome)
        return outcomes

    def _run_one(
        self,
        run_one: Callable[[str, str, int, int, dict[str, Any]], str],
        entity: str,
        key: str,
        item: int,
        attempt: int,
        record: dict[str, Any],
        options: dict[str, Any],
    ) -> tuple[str | None, float | None]:
        """(The record's outcome, None when given back; the limiter's wait when it was given
        back for want of tokens, else None.)"""
        # A Reject (an outcome the database cannot take) ends the batch: the message goes
        # back to the queue, and its next run skips the records that ended.
        try:
            return run_one(entity, key, item, attempt, options), None
        except (Retry, Reject, Ignore):
            raise
        except Exception as error:
            if is_transient(error):
                outcome = self.end_item(error, item, attempt, kwargs=record)
                return outcome, _paced_s(error) if outcome is None else None
            # A lone record's task would fail and its item be released again until given
            # up; in a batch the others go on, and this one ends failed for `replay` at once.
            log.exception("%s: record %s %s failed", self.name, entity, key)
            failure = self.failure_row(record, error)
            if failure is not None:
                self._record(lambda audit: audit.write(failure))
            self._record_item(lambda items: items.finish(item))
            return FAILED, None

    def observe(self, kwargs: dict[str, Any], outcome: Any, seconds: float) -> None:
        """Nothing for the batch: each of its records is observed as it ends."""


# What a batch's record carries that is not an option of the record's sync.
_NOT_OPTIONS = frozenset({"job", "tenant", "key", "work_item", "attempt"})


def _paced_s(error: BaseException) -> float | None:
    """The limiter's wait when `error` says our own limiter had no tokens, else None."""
    if not _only_tokens_missing(error):
        return None
    return retry_after_s(error) or 0.0


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


class Then(Enum):
    """How a run goes on after a transient error."""

    DEFER = "defer"
    RETRY = "retry"
    FAIL = "fail"


DEFER, RETRY, FAIL = Then.DEFER, Then.RETRY, Then.FAIL


@dataclass(frozen=True)
class TransientEnd:
    """What a transient error makes of a run (`transient_end`)."""

    action: Then
    delay_s: float = 0.0  # RETRY: not before this many seconds (uncapped)
    counted: bool = True  # RETRY: it spends one of the task's retries


def transient_end(
    error: BaseException, retries: int, max_retries: int, *, paced: bool = False
) -> TransientEnd:
    """The one decision after a transient `error`, for a queued task (ConnectorTask) and a
    released record (RecordSyncTask) alike, after `retries` retries so far.

    A wait longer than a message may sleep defers; `paced` (a released record): tokens our
    own limiter did not have within the short wait are the dispatcher's pacing, retried
    after the limiter's wait and not counted; else a retry with the one policy's delay,
    never sooner than the error asks, while retries are left; else the run fails.
    """
    wait = retry_after_s(error)
    if wait is not None and wait > MAX_COUNTDOWN_S:
        return TransientEnd(DEFER)
    if paced and _only_tokens_missing(error):
        return TransientEnd(RETRY, wait or 0.0, counted=False)
    if retries < max_retries:
        return TransientEnd(RETRY, TASK_RETRY_POLICY.delay_s(retries, wait))
    return TransientEnd(FAIL)


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
