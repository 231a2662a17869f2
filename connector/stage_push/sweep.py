"""The sweeper: webhook events whose message was lost are queued again.

An event is stored before it is queued (the receiver commits, then enqueues), so the table
knows what the broker may have forgotten: a Redis restarted without persistence drops every
queued message, kombu's Redis transport loses a message a worker took but had not yet
recorded as unacknowledged when it was killed, and a receiver whose enqueue failed leaves
its event `received`. Beat runs this every `sweep_interval_s`; an event still unfinished
`sweep_grace_s` after it arrived (and after the sweeper last queued it) is queued again.
The push is idempotent (a finished event is never applied twice, an older one never
overwrites a newer), so a late duplicate of a message that was only slow changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from connector.jobs import PUSH_STAGE, Enqueue
from connector.storage.webhook_events import WebhookEvents

log = logging.getLogger(__name__)

# Per sweep: the next one takes the rest (a backlog is not queued in one burst).
SWEEP_LIMIT = 1000


@dataclass
class SweepResult:
    """What one sweep queued again, per tenant."""

    requeued: int = 0
    by_tenant: dict[str, int] = field(default_factory=dict)


def sweep_unfinished_events(
    events: WebhookEvents,
    enqueue: Enqueue,
    *,
    tenants: Collection[str],
    grace_s: float,
    limit: int = SWEEP_LIMIT,
) -> SweepResult:
    """Queue again every event of `tenants` unfinished after `grace_s`, at most `limit`.

    Only the tenants this deployment serves: deployments may share a database (each with
    its own queue), and another's events queued here would fail as an unknown tenant; the
    events of a tenant taken out of the file wait, unfinished, until it comes back.

    Raises what `enqueue` raises (the broker is down): the events queued until then are
    marked, the others are found again by the next sweep.
    """
    counts: Counter[str] = Counter()
    for stuck in events.unfinished(grace_s, tenants=tenants, limit=limit):
        enqueue(PUSH_STAGE, {"tenant": stuck.tenant, "webhook_event_id": stuck.id})
        events.mark_requeued(stuck.id)
        counts[stuck.tenant] += 1
    if counts:
        log.warning(
            "sweeper: queued %d unfinished webhook event(s) again: %s",
            sum(counts.values()),
            ", ".join(f"{tenant}={count}" for tenant, count in sorted(counts.items())),
        )
    return SweepResult(sum(counts.values()), dict(counts))
