"""Refused webhook deliveries: every read and write of the webhook_refusals table.

Refusals come from outside, unauthenticated, so keeping them must stay cheap and bounded
whatever a sender does: each process writes at most `WRITES_PER_S` rows a second (bursts of
`BURST`); refusals beyond that are folded into the `count` of the next row written for the
same tenant and reason (they are all counted in mlc_webhook_rejections_total anyway), and rows
older than `RETENTION` are deleted, by the writer itself, at most every `PRUNE_EVERY_S`.
Worst case per process: WRITES_PER_S × RETENTION rows. An unknown tenant is kept as None,
so names a caller makes up are never stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from connector.storage.database import Database
from connector.storage.models import WebhookRefusal, utcnow

RETENTION = timedelta(days=3)
PRUNE_EVERY_S = 600.0
WRITES_PER_S = 5.0
BURST = 20.0
ADDRESS_LIMIT = 64


@dataclass(frozen=True)
class Refusal:
    """One refused delivery, as the receiver reports it."""

    tenant: str | None
    reason: str  # bad_auth | bad_signature | unknown_tenant | bad_payload | too_large
    http_status: int
    remote_addr: str | None


class WebhookRefusals:
    """The webhook_refusals table; one instance per process (it holds the write budget)."""

    def __init__(
        self,
        database: Database,
        *,
        writes_per_s: float = WRITES_PER_S,
        burst: float = BURST,
        retention: timedelta = RETENTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.writes_per_s = writes_per_s
        self.burst = burst
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = burst
        self._filled_at = clock()
        self._pruned_at: float | None = None
        self._folded: dict[tuple[str | None, str], int] = {}

    def record(self, refusal: Refusal) -> bool:
        """Keep one refusal; False when it was folded into a later row (no budget now).
        Database errors pass through: the caller decides they must not change the answer."""
        key = (refusal.tenant, refusal.reason)
        with self._lock:
            now = self._clock()
            self._tokens = min(
                self.burst, self._tokens + (now - self._filled_at) * self.writes_per_s
            )
            self._filled_at = now
            if self._tokens < 1.0:
                self._folded[key] = self._folded.get(key, 0) + 1
                return False
            self._tokens -= 1.0
            count = 1 + self._folded.pop(key, 0)
            prune = self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S
            if prune:
                self._pruned_at = now
        moment = utcnow()
        with self.database.session() as session:
            session.add(
                WebhookRefusal(
                    refused_at=moment,
                    tenant=refusal.tenant,
                    reason=refusal.reason[:32],
                    http_status=refusal.http_status,
                    remote_addr=(refusal.remote_addr or "")[:ADDRESS_LIMIT] or None,
                    count=count,
                )
            )
            if prune:
                session.execute(
                    delete(WebhookRefusal).where(
                        WebhookRefusal.refused_at < moment - self.retention
                    )
                )
        return True

    def recent(self, tenant: str | None = None, limit: int = 50) -> list[WebhookRefusal]:
        """The newest refusals (of one tenant, or of all, unknown tenants included)."""
        query = select(WebhookRefusal)
        if tenant:
            query = query.where(WebhookRefusal.tenant == tenant)
        query = query.order_by(WebhookRefusal.refused_at.desc(), WebhookRefusal.id.desc())
        with self.database.session() as session:
            return list(session.scalars(query.limit(limit)))

    def counts_since(self, since: datetime) -> dict[str | None, int]:
        """Refusals per tenant (None: unknown tenants) since `since`, folded ones included."""
        query = (
            select(WebhookRefusal.tenant, func.sum(WebhookRefusal.count))
            .where(WebhookRefusal.refused_at >= since)
            .group_by(WebhookRefusal.tenant)
        )
        with self.database.session() as session:
            return {tenant: int(total or 0) for tenant, total in session.execute(query)}
