"""What the dispatcher releases: pure arithmetic over budgets, backlogs and queue room.

Two questions, answered without any I/O so that they can be tested on their own: how many
of a tenant's records its remaining budget can take now (`allowance`), and which tenants'
records go out, in which order, when the shared room on the bulk queue is smaller than what
the tenants could take (`releases`: round-robin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connector.ratelimit import Limit, LimitUsage


@dataclass(frozen=True)
class ItemCost:
    """What one record's task is expected to take from a tenant's Pipedrive limits.

    A record with its IFS snapshot and a plan hint is one write (a POST or PATCH: one
    request, 5 tokens); `requests` and `tokens` say so, and the search limit is not counted
    (a search happens only for a record the plan could not place).
    """

    requests: int = 1
    tokens: int = 5
    search: int = 0

    def charge(self, limit: Limit) -> int:
        if limit.name == "search":
            return self.search
        return self.requests if limit.per_request else self.tokens


@dataclass(frozen=True)
class Backlog:
    """One tenant as the dispatcher sees it at one tick."""

    tenant: str
    waiting: int  # items stored and due (bounded by what the tick asked for)
    in_flight: int  # released, not yet finished
    allowance: int  # items the tenant's budget can take now

    @property
    def quota(self) -> int:
        """What may go out for this tenant now: its allowance less what is on its way."""
        return max(0, min(self.waiting, self.allowance - self.in_flight))


def allowance(usages: Sequence[LimitUsage], cost: ItemCost) -> int:
    """Items the tenant's limits can grant now, as the limiter reports them: per limit what is
    left divided by the item's charge, the smallest over all limits.

    Only what is left now, never tokens still to come: a record released ahead of its tokens
    would find none within its short wait and go back, and a record that needs several
    requests (an order whose customer is new) would spend some of them each time.
    """
    items = math.inf
    for usage in usages:
        charge = cost.charge(usage.limit)
        if charge <= 0:
            continue
        items = min(items, usage.remaining // charge)
    return 0 if items == math.inf else int(items)


def releases(backlogs: Sequence[Backlog], room: int, start: int = 0) -> list[str]:
    """The tenant of each item to release, in the order they go on the queue.

    Round-robin, one item per tenant per round, beginning with the tenant at `start`
    (the dispatcher turns it every tick, so no tenant is always first): each tenant gets at
    most its quota, and all of them together at most `room`. A tenant whose budget is spent
    gets nothing and takes no room from the others.
    """
    if not backlogs or room <= 0:
        return []
    offset = start % len(backlogs)
    turned = [*backlogs[offset:], *backlogs[:offset]]
    left = {backlog.tenant: backlog.quota for backlog in turned if backlog.quota > 0}
    chosen: list[str] = []
    while left and len(chosen) < room:
        for tenant in list(left):
            if len(chosen) == room:
                break
            chosen.append(tenant)
            left[tenant] -= 1
            if not left[tenant]:
                del left[tenant]
    return chosen


def counted(order: Sequence[str]) -> dict[str, int]:
    """How many items of each tenant an order releases."""
    counts: dict[str, int] = {}
    for tenant in order:
        counts[tenant] = counts.get(tenant, 0) + 1
    return counts


def interleave(released: Mapping[str, Sequence[int]], order: Sequence[str]) -> list[int]:
    """The released item ids in `order` (tenant by tenant as `releases` chose them), so the
    queue itself alternates between tenants; ids a tenant got fewer of are skipped."""
    positions = dict.fromkeys(released, 0)
    ids: list[int] = []
    for tenant in order:
        items = released.get(tenant, ())
        if positions.get(tenant, 0) < len(items):
            ids.append(items[positions[tenant]])
            positions[tenant] += 1
    return ids
