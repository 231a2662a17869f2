"""What the dispatcher releases: pure arithmetic over budgets, backlogs and queue room.

Answered without any I/O so that they can be tested on their own: what a tenant's record
costs (`RecordCosts`: the running mean of what its recent attempts took), how many of its
records its remaining budget can take by the time they ask (`allowance`), which tenants'
records go out, in which order, when the shared room on the bulk queue is smaller than what
the tenants could take (`releases`: round-robin), and what holds a tenant's records when
none can go (`holds`, for `status`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connector.ratelimit import Limit, LimitUsage

# Pipedrive tokens per request a record's estimate counts (a POST or PATCH costs 5, a GET of
# one record 1, a search 20): what the daily budget is charged per estimated request.
TOKENS_PER_REQUEST = 5


@dataclass(frozen=True)
class ItemCost:
    """What one released record's attempt is expected to take from a tenant's Pipedrive
    limits: `requests` (the burst limit), `tokens` (the daily budget), `search` (the search
    limit, not counted: it is the burst limit that binds before it for every record shape).

    A mean, not a bound: an order whose customer is linked takes one write, one whose
    customer is new takes three (search, create the organization, create the deal).
    """

    requests: float = 1.0
    tokens: float = TOKENS_PER_REQUEST
    search: float = 0.0

    @classmethod
    def of_requests(cls, requests: float) -> ItemCost:
        return cls(requests=requests, tokens=requests * TOKENS_PER_REQUEST)

    def charge(self, limit: Limit) -> float:
        if limit.name == "search":
            return self.search
        return self.requests if limit.per_request else self.tokens


# A look at this many attempts or more sets a tenant's mean to what they took; a look at
# fewer moves it that share of the way (a single odd attempt does not decide).
SETTLED_ATTEMPTS = 10
# An estimate is never below one request: a run of unchanged records (none at all) must not
# make a tenant's next records look free, and a tenant never has more records on their way
# than its burst window holds requests (queue positions and worker slots others could use).
MIN_REQUESTS = 1.0


class RecordCosts:
    """Per tenant, the running mean of Pipedrive requests one released attempt takes, learnt
    from what its recent attempts actually took (each audit row counts its requests).

    The dispatcher releases a tenant's records by this mean, so a tenant whose records need
    three requests each gets a third as many records per window as one whose records need
    one: its budget is used and not overdrawn, and no attempt waits for tokens that a record
    released beside it took.
    """

    def __init__(self, prior: ItemCost | None = None) -> None:
        self.prior = prior or ItemCost()
        self._means: dict[str, float] = {}

    def cost(self, tenant: str) -> ItemCost:
        mean = self._means.get(tenant)
        return self.prior if mean is None else ItemCost.of_requests(mean)

    def learn(self, tenant: str, requests: int, attempts: int) -> None:
        """`attempts` more attempts of `tenant` took `requests` Pipedrive requests together."""
        if attempts <= 0:
            return
        before = self._means.get(tenant, self.prior.requests)
        weight = min(1.0, attempts / SETTLED_ATTEMPTS)
        mean = before + (requests / attempts - before) * weight
        self._means[tenant] = max(MIN_REQUESTS, mean)

    def forget(self, tenant: str) -> None:
        self._means.pop(tenant, None)


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


def allowance(usages: Sequence[LimitUsage], cost: ItemCost, ahead_s: float = 0.0) -> int:
    """Items the tenant's limits can grant by the time released records ask for them, as the
    limiter reports them: per limit what is left now, plus what leaves its rolling window
    within `ahead_s` (the time a released record takes to reach its first request), divided
    by the item's expected charge; the smallest over all limits.

    What leaves the window within `ahead_s` is taken as an even share of what is used (grants
    paced by the dispatcher are spread over the window), and none of it when the limiter
    says the next unit leaves later than that. `ahead_s` stays well under a record's short
    wait for its first tokens: a record released ahead of them finds them within it, where
    one released a window ahead would go back.
    """
    items = math.inf
    for usage in usages:
        charge = cost.charge(usage.limit)
        if charge <= 0:
            continue
        left = float(usage.remaining)
        if ahead_s > 0 and usage.retry_after_s <= ahead_s:
            left += math.floor(usage.used * min(1.0, ahead_s / usage.limit.window_s))
        items = min(items, left // charge)
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


@dataclass(frozen=True)
class Hold:
    """Why a tenant's stored records are not released now: the limit (`burst`, `search`,
    `daily`, or `paused` after Pipedrive's 403 block page) and the seconds until it lets the
    next record through, as the limiter counts it."""

    limit: str
    seconds: float
    used: int = 0
    capacity: int = 0


def holds(usages: Sequence[LimitUsage], paused_s: float, cost: ItemCost) -> list[Hold]:
    """What keeps a tenant's next record from being released now (empty: nothing, the
    records go out at the next tick): a pause, and each limit with less left than a record's
    expected charge."""
    found = [Hold("paused", paused_s)] if paused_s > 0 else []
    for usage in usages:
        charge = cost.charge(usage.limit)
        if charge > 0 and usage.remaining < charge:
            found.append(
                Hold(
                    usage.limit.name or "requests",
                    usage.retry_after_s,
                    usage.used,
                    usage.limit.available,
                )
            )
    return found
