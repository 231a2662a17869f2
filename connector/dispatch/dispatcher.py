"""The dispatcher: every tick, release each tenant's stored records within its budget.

One dispatcher works per deployment at a time (a lease in Redis, renewed every tick and
taken over by another worker within seconds when its holder dies). A tick:

1. every few seconds, puts back items released so long ago that their message must be lost
   (a worker killed mid-task, a broker that lost its queue): the sweep of stale releases;
2. lists the tenants with stored records and asks the limiter (`usage`, through
   Coordination: never its keys) how many records each tenant's budget takes now, less what
   it has on its way; a tenant whose budget is spent is passed over and holds no place in
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
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from connector.diagnostics.headroom import PIPEDRIVE, tenant_limits
from connector.dispatch.pacing import Backlog, ItemCost, allowance, counted, interleave, releases
from connector.errors import ConnectorError, UnknownTenantError, is_connection_loss
from connector.jobs import SYNC_RECORDS, Enqueue
from connector.pipedrive.client import SEARCH_BUCKET, burst_limits, daily_limit
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, Attempt, AuditLog
from connector.storage.models import utcnow
from connector.storage.work_items import ReleasedItem, WorkItems

if TYPE_CHECKING:
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

TICK_S = 0.5
# While Postgres or Redis is away, the dispatcher says so at most this often.
OUTAGE_LOG_S = 30.0
LEASE_TTL_S = 5.0
SWEEP_EVERY_S = 5.0
# A released item not finished after this long lost its message: released again. Longer than
# any task runs (a record lock waits up to 30 s, HTTP retries some more); a duplicate run is
# harmless anyway (every upsert is idempotent), a lost record is not.
STALE_AFTER_S = 90.0
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


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        enqueue: Enqueue,
        *,
        in_flight_cap: int | None = None,
        stale_after_s: float = STALE_AFTER_S,
        cost: ItemCost | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.runtime = runtime
        self.enqueue = enqueue
        self.items = WorkItems(runtime.database)
        self.in_flight_cap = in_flight_cap or runtime.settings.dispatch_in_flight
        self.stale_after_s = stale_after_s
        self.cost = cost or ItemCost()
        self.batch_size = batch_size or runtime.settings.dispatch_batch
        self._turn = 0
        self._last_sweep = 0.0

    def tick(self) -> Tick:
        done = Tick()
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            done.swept, done.dropped = self._sweep()
        tenants = self.items.waiting_tenants()
        if not tenants:
            return done
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
        key, _ = tenant_limits(config, PIPEDRIVE)
        # Released records are bulk work: the daily reserve is not theirs to take.
        limits = [
            *burst_limits(config.pipedrive, SEARCH_BUCKET),
            daily_limit(config.pipedrive, bulk=True),
        ]
        try:
            usages = self.runtime.coordination.usage(key, limits)
        except RedisError as error:
            log.warning("dispatch: limiter of %s unreadable, nothing released: %s", tenant, error)
            return 0
        return allowance(usages, self.cost)

    def _send(self, items: list[ReleasedItem]) -> int:
        """Send the released items in messages (`messages`), in their order; what could not
        be sent is put back. The number of items sent."""
        sent = 0
        batches = messages(items, self.batch_size)
        for position, batch in enumerate(batches):
            job, kwargs = message(batch)
            try:
                self.enqueue(job, kwargs)
            except ConnectorError as error:  # the broker is down: they wait for the next tick
                left = [item.id for rest in batches[position:] for item in rest]
                log.warning("dispatch: %s; %d items put back", error, len(left))
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
                            "dispatch: paused, connection lost (%s: %s); trying every %.1fs",
                            type(error).__name__,
                            str(error).splitlines()[0] if str(error) else "",
                            tick_s,
                        )
                stop.wait(max(0.0, tick_s - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(RedisError):  # else it expires by itself
                lease.drop()
