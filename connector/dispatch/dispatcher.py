"""The dispatcher: every tick, release each tenant's stored records within its budget.

One dispatcher works per deployment at a time (a lease in Redis, renewed every tick and
taken over by another worker within seconds when its holder dies). A tick:

1. every few seconds, puts back items released so long ago that their message must be lost
   (a worker killed mid-task, a broker that lost its queue): the sweep of stale releases;
2. lists the tenants with stored records and asks the limiter (`usage`, through
   Coordination: never its keys) how many records each tenant's budget takes now, at what
   the tenant's recent attempts cost (pacing.RecordCosts, learnt from their audit rows every
   few seconds), less what it has on its way; a tenant whose budget is spent, or whose
   Pipedrive work is paused after a 403 block page, is passed over and holds no place in
   the queue (a tick every 0.5 s keeps up with a budget that frees as its window rolls);
3. hands out the room left under the deployment's in-flight cap round-robin (pacing.py),
   marks those items released (one transaction), then sends them, alternating tenants,
   several records of one tenant per message (`messages`: at most `dispatch_batch`, and
   spread over a few messages so that several workers share a small release).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from connector.diagnostics.headroom import PIPEDRIVE, tenant_limits
from connector.dispatch.pacing import (
    Backlog,
    ItemCost,
    RecordCosts,
    allowance,
    counted,
    interleave,
    releases,
)
from connector.errors import ConnectorError, UnknownTenantError, is_connection_loss, summary
from connector.jobs import SYNC_RECORDS, Enqueue
from connector.pipedrive.client import SEARCH_BUCKET, burst_limits, daily_limit
from connector.ratelimit import LimitUsage
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, SKIPPED, Attempt, AuditLog
from connector.storage.models import utcnow
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.work_items import ReleasedItem, WorkItems

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig

log = logging.getLogger(__name__)

TICK_S = 0.5
# Tokens that leave a tenant's rolling window this soon count as there: a released record
# reaches its first request about that much later (the tick, the queue, the worker, the task
# start), so a token freed meanwhile is not left idle until the next tick (measured: 0.79 of
# the budget used without it, 0.91 with it). Below the record's 0.5 s wait for its first
# tokens (workers/base.py), so that one released a little early waits instead of going back.
RELEASE_AHEAD_S = 0.4
# While Postgres or Redis is away, the dispatcher says so at most this often.
OUTAGE_LOG_S = 30.0
LEASE_TTL_S = 5.0
SWEEP_EVERY_S = 5.0
# How often the cost of each tenant's records is learnt again from the audit rows written
# since (one query over the newest rows, summed in the database).
COSTS_EVERY_S = 2.0
# The audit rows the first look reads (of every tenant: the newest of the log).
COSTS_FIRST_LOOK = 2000
# The tenant_state key under which the dispatcher notes which deployment (queue) a tenant's
# stored records belong to, and since when the tenant is missing from its tenants file; and
# how often it looks.
OWNER_KEY = "backlog_owner"
ABSENT_CHECK_EVERY_S = 60.0
# Releases without an end (each a lost message or a crashed task) before an item is given up
# with a failed audit row, for `replay`.
MAX_RELEASES = 10
# A tenant's release of one tick goes out in at least this many messages (when it has that
# many items): the bulk workers' processes share it instead of one running it all.
SPREAD = 4


def messages(items: Sequence[ReleasedItem], batch_size: int) -> list[list[ReleasedItem]]:
    """The released items (in queue order, tenants alternating) grouped into messages: each
    tenant's items in runs of at most `batch_size`, and in at least SPREAD messages when it
    has that many, so that a small release still reaches several workers; the messages
    alternate between tenants as the items did.
    """
    by_tenant: dict[str, list[ReleasedItem]] = {}
    for item in items:
        by_tenant.setdefault(item.tenant, []).append(item)
    runs: dict[str, list[list[ReleasedItem]]] = {}
    for tenant, mine in by_tenant.items():
        size = max(1, min(batch_size, math.ceil(len(mine) / SPREAD)))
        runs[tenant] = [mine[start : start + size] for start in range(0, len(mine), size)]
    ordered: list[list[ReleasedItem]] = []
    while runs:
        for tenant in list(runs):
            ordered.append(runs[tenant].pop(0))
            if not runs[tenant]:
                del runs[tenant]
    return ordered


def message(batch: Sequence[ReleasedItem]) -> tuple[str, dict[str, Any]]:
    """(job, kwargs) of one message: a lone record as its own record job, several as one
    SYNC_RECORDS job that runs them one by one."""
    records = [
        {**item.kwargs, "work_item": item.id, "attempt": item.attempts + 1} for item in batch
    ]
    if len(batch) == 1:
        return batch[0].job, records[0]
    return SYNC_RECORDS, {
        "tenant": batch[0].tenant,
        "records": [
            {**record, "job": item.job} for item, record in zip(batch, records, strict=True)
        ],
    }


@dataclass
class Tick:
    """What one tick did (for logs and tests)."""

    released: int = 0
    swept: int = 0
    dropped: int = 0
    passed_over: int = 0  # tenants with stored records whose budget took none now
    absent_dropped: int = 0  # items of tenants gone from the tenants file past the grace


def pipedrive_budget(runtime: Runtime, config: TenantConfig) -> tuple[list[LimitUsage], float]:
    """What a tenant's released (bulk) records may take from Pipedrive now, as the limiter
    counts it: the burst, search and daily limits (the daily reserve left out: it is for
    interactive work), and the seconds its Pipedrive work is still paused after a 403."""
    key, _ = tenant_limits(config, PIPEDRIVE)
    limits = [
        *burst_limits(config.pipedrive, SEARCH_BUCKET),
        daily_limit(config.pipedrive, bulk=True),
    ]
    coordination = runtime.coordination
    return coordination.usage(key, limits), coordination.limiter.paused_for(key)


def drop_backlog(runtime: Runtime, tenant: str, why: str) -> int:
    """Remove every stored record of `tenant` with one audit row saying how many and `why`
    (a later sync plans them again); how many there were."""
    count = WorkItems(runtime.database).forget(tenant)
    log.warning("dispatch: %d stored records of tenant %s dropped: %s", count, tenant, why)
    AuditLog(runtime.database).write(
        Attempt(
            tenant=tenant,
            direction=IFS_TO_PIPEDRIVE,
            entity="backlog",
            record_key="backlog",
            operation="drop_backlog",
            status=SKIPPED,
            error=(
                f"{count} stored record(s) dropped: {why}; once the tenant is served again, "
                f"`ml-connector sync {tenant}` plans them again"
            ),
        )
    )
    return count


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        enqueue: Enqueue,
        *,
        in_flight_cap: int | None = None,
        stale_after_s: float | None = None,
        cost: ItemCost | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.enqueue = enqueue
        self.items = WorkItems(runtime.database)
        self.in_flight_cap = in_flight_cap or runtime.settings.dispatch_in_flight
        # A released item not finished after this long lost its message: released again.
        self.stale_after_s = (
            runtime.settings.dispatch_stale_after_s if stale_after_s is None else stale_after_s
        )
        # `cost`: what a record is taken to cost until its tenant's attempts say otherwise.
        self.costs = RecordCosts(cost)
        self.batch_size = batch_size or runtime.settings.dispatch_batch
        self._turn = 0
        self._last_sweep = 0.0
        self._last_costs = 0.0
        self._last_absent = 0.0
        self._costs_after_id: int | None = None

    def tick(self) -> Tick:
        done = Tick()
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            done.swept, done.dropped = self._sweep()
        tenants = self.items.waiting_tenants()
        if not tenants:
            return done
        if now - self._last_costs >= COSTS_EVERY_S:
            self._last_costs = now
            self._learn_costs(tenants)
        if now - self._last_absent >= ABSENT_CHECK_EVERY_S:
            self._last_absent = now
            done.absent_dropped = self._mind_absent(tenants)
        in_flight = self.items.in_flight()
        served = self.runtime.tenants
        # Items of tenants this deployment does not serve (removed from the file) take no room.
        room = self.in_flight_cap - sum(n for t, n in in_flight.items() if t in served)
        backlogs = []
        for tenant in tenants:
            budget = self._allowance(tenant)
            if budget is None:
                continue
            if budget <= in_flight.get(tenant, 0):
                done.passed_over += 1
            # How many are due is not counted (a tick stays a few index probes per tenant):
            # a tenant with fewer than its quota simply releases fewer.
            backlogs.append(Backlog(tenant, budget, in_flight.get(tenant, 0), budget))
        order = releases(backlogs, room, start=self._turn)
        self._turn += 1
        if not order:
            return done
        released = self.items.release(counted(order))
        by_id = {item.id: item for items in released.values() for item in items}
        ids = interleave({t: [i.id for i in items] for t, items in released.items()}, order)
        done.released = self._send([by_id[item_id] for item_id in ids])
        return done

    def _allowance(self, tenant: str) -> int | None:
        """Records the tenant's Pipedrive budget takes now; None for a tenant
        this deployment does not serve (left alone: not ours, or removed from the file)."""
        try:
            config = self.runtime.tenant(tenant)
        except UnknownTenantError:
            return None
        try:
            usages, paused_s = pipedrive_budget(self.runtime, config)
        except RedisError as error:
            log.warning("dispatch: limiter of %s unreadable, nothing released: %s", tenant, error)
            return 0
        if paused_s > 0:  # a record released now would only wait and go back
            return 0
        return allowance(usages, self.costs.cost(tenant), RELEASE_AHEAD_S)

    def _learn_costs(self, tenants: list[str]) -> None:
        """What the tenants' attempts written since the last look took from Pipedrive, into
        their running means (the first look reads the newest rows: a dispatcher taking over
        knows at once what records cost)."""
        audit = AuditLog(self.runtime.database)
        if self._costs_after_id is None:
            self._costs_after_id = max(0, audit.newest_id() - COSTS_FIRST_LOOK)
        spent, self._costs_after_id = audit.pipedrive_requests(tenants, self._costs_after_id)
        for tenant, (requests, attempts) in spent.items():
            self.costs.learn(tenant, requests, attempts)

    def _mind_absent(self, waiting: list[str]) -> int:
        """Stored records of a tenant missing from the tenants file are kept (a typo in an id
        must not lose them) and dropped with one audit row after the grace period; a tenant
        back in the file keeps them. Only a tenant this deployment served is ever dropped
        (several deployments may share a database: another's tenants are not in our file).
        What each tenant's records belong to, and since when it is absent, is noted in
        tenant_state (a restart does not restart the clock). The number of items dropped."""
        served = self.runtime.tenants
        if not served:  # a file that serves nobody is a broken file, not every tenant removed
            return 0
        queue = self.runtime.settings.queue
        state = DatabaseTenantState(self.runtime.database)
        notes = state.with_key(OWNER_KEY)
        now = utcnow()
        grace = timedelta(days=self.runtime.settings.absent_tenant_backlog_days)
        dropped = 0
        for tenant in waiting:
            note = notes.get(tenant)
            if tenant in served:
                if note != {"queue": queue}:
                    state.put(tenant, OWNER_KEY, {"queue": queue})
                continue
            if note is None or note.get("queue") != queue:
                continue  # never ours: left to the deployment that serves it
            since = note.get("absent_since")
            if since is None:
                state.put(tenant, OWNER_KEY, {"queue": queue, "absent_since": now.isoformat()})
                log.warning(
                    "dispatch: tenant %s has stored records but is not in the tenants file: "
                    "kept for %g days, then dropped",
                    tenant,
                    grace.total_seconds() / 86_400,
                )
            elif now - datetime.fromisoformat(since) >= grace:
                dropped += drop_backlog(
                    self.runtime, tenant, f"it has not been in the tenants file since {since}"
                )
                state.delete(tenant, OWNER_KEY)
        return dropped

    def _send(self, items: list[ReleasedItem]) -> int:
        """Send the released items in messages (`messages`), in their order; what could not
        be sent is put back. The number of items sent."""
        sent = 0
        batches = messages(items, self.batch_size)
        for position, batch in enumerate(batches):
            job, kwargs = message(batch)
            try:
                self.enqueue(job, kwargs)
            except ConnectorError as error:  # the broker is down: the rest wait for a tick
                # The failed message itself stays released: a publish that raised may still
                # have reached the broker, and a record of it put back would be released again
                # as a first attempt, whose create does not search before posting (a crash
                # after its POST would then duplicate). Left released, the stale sweep sends it
                # again as one attempt more, which searches first.
                left = [item.id for rest in batches[position + 1 :] for item in rest]
                log.warning(
                    "dispatch: %s; %d items put back, %d left to the stale sweep",
                    error,
                    len(left),
                    len(batch),
                )
                self.items.unrelease(left)
                return sent
            sent += len(batch)
        return sent

    def _sweep(self) -> tuple[int, int]:
        cutoff = utcnow() - timedelta(seconds=self.stale_after_s)
        dropped, swept = self.items.sweep_stale(cutoff, MAX_RELEASES)
        if swept:
            log.warning(
                "dispatch: %d items released before %s never finished: again", swept, cutoff
            )
        audit = AuditLog(self.runtime.database)
        for item in dropped:
            audit.write(
                Attempt(
                    tenant=item.tenant,
                    direction=IFS_TO_PIPEDRIVE,
                    entity=item.entity,
                    record_key=item.record_key,
                    status=FAILED,
                    error=(
                        f"released {MAX_RELEASES} times and its task never finished "
                        "(a worker crashed on it each time?); replay it once the cause is fixed"
                    ),
                    correlation_id=item.kwargs.get("run_id"),
                    attempt=item.attempts + 1,
                    replay_task=item.job,
                    replay_args={"tenant": item.tenant, "key": item.record_key},
                )
            )
        return swept, len(dropped)

    def run(self, stop: threading.Event, *, tick_s: float = TICK_S) -> None:
        """Tick until `stop` is set, while this process holds the deployment's lease; errors
        (a database or Redis outage) are logged and the next tick tries again."""
        lease = self.runtime.coordination.lease(
            f"dispatch:{self.runtime.settings.queue}", ttl_s=LEASE_TTL_S
        )
        outage_logged_at: float | None = None
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if lease.hold():
                        self.runtime.refresh_if_stale()
                        self.tick()
                    outage_logged_at = None
                except Exception as error:  # the loop must outlive any outage
                    if not is_connection_loss(error):
                        log.exception("dispatch: tick failed; trying again")
                    elif outage_logged_at is None or started - outage_logged_at >= OUTAGE_LOG_S:
                        # An outage fails every tick: one line now and then, not a traceback
                        # twice a second.
                        outage_logged_at = started
                        log.warning(
                            "dispatch: paused, connection lost (%s); trying every %.1fs",
                            summary(error),
                            tick_s,
                        )
                stop.wait(max(0.0, tick_s - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(RedisError):  # else it expires by itself
                lease.drop()
