"""Webhook delivery: background workers POST events to subscriptions, with Pipedrive's retries,
ban after repeated first-try failures, and injectable duplicates and reordering."""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from simulators.pipedrive.records import rfc3339, utc_now

if TYPE_CHECKING:
    from simulators.pipedrive.state import PipedriveSim

# Reordering holds events until this many are waiting (or the oldest waited
# Faults.reorder_hold_s), then releases them newest first.
REORDER_BATCH = 2
DELIVERY_LOG_SIZE = 10_000


@dataclass(order=True)
class Delivery:
    due: float
    seq: int
    webhook_id: int = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(compare=False, default=1)
    duplicate: bool = field(compare=False, default=False)
    generation: int = field(compare=False, default=0)


class WebhookDispatcher:
    """Shares the simulator's lock; never sends HTTP while holding it."""

    def __init__(self, sim: PipedriveSim) -> None:
        self.sim = sim
        self._cond = threading.Condition(sim.lock)
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self.generation = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=DELIVERY_LOG_SIZE)
        self._clear()

    def _clear(self) -> None:
        self._heap: list[Delivery] = []
        self._busy: set[int] = set()
        self._deferred: dict[int, list[Delivery]] = defaultdict(list)
        self._held: list[Delivery] = []
        self._held_since = 0.0
        self.log.clear()

    def start(self) -> None:
        for number in range(max(1, self.sim.settings.webhook_workers)):
            thread = threading.Thread(
                target=self._work, name=f"pipedrive-sim-webhooks-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()

    def reset(self) -> None:
        """Forget queued deliveries; answers of in-flight ones are ignored (older generation)."""
        with self._cond:
            self.generation += 1
            self._clear()
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return (
                len(self._heap)
                + len(self._held)
                + sum(len(v) for v in self._deferred.values())
                + len(self._busy)
            )

    # Called by PipedriveSim with its lock held.
    def enqueue(self, webhook_id: int, payload: dict[str, Any]) -> None:
        faults = self.sim.faults
        now = time.monotonic()
        delivery = Delivery(now, next(self._seq), webhook_id, payload, generation=self.generation)
        if faults.reorder_webhooks:
            if not self._held:
                self._held_since = now
            self._held.append(delivery)
        else:
            heapq.heappush(self._heap, delivery)
        if faults.duplicate_webhooks and self.sim.rng.random() < faults.duplicate_webhooks:
            twin = Delivery(
                now,
                next(self._seq),
                webhook_id,
                payload,
                duplicate=True,
                generation=self.generation,
            )
            heapq.heappush(self._heap, twin)
        self._cond.notify_all()

    def _release_held(self, now: float, force: bool = False) -> None:
        if not self._held:
            return
        if (
            force
            or len(self._held) >= REORDER_BATCH
            or now - self._held_since >= self.sim.faults.reorder_hold_s
        ):
            for delivery in reversed(self._held):
                delivery.due = now
                delivery.seq = next(self._seq)
                heapq.heappush(self._heap, delivery)
            self._held.clear()

    def _next_due(self, now: float) -> tuple[Delivery | None, float | None]:
        self._release_held(now, force=not self.sim.faults.reorder_webhooks)
        while self._heap and self._heap[0].due <= now:
            delivery = heapq.heappop(self._heap)
            if delivery.webhook_id in self._busy:
                # One delivery at a time per subscription keeps its order deterministic.
                self._deferred[delivery.webhook_id].append(delivery)
                continue
            return delivery, None
        waits = []
        if self._heap:
            waits.append(self._heap[0].due - now)
        if self._held:
            waits.append(self._held_since + self.sim.faults.reorder_hold_s - now)
        return None, (max(0.001, min(waits)) if waits else None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    delivery, wait = self._next_due(time.monotonic())
                    if delivery is not None:
                        break
                    self._cond.wait(timeout=wait)
                send = self.sim.prepare_delivery(delivery)
                if send is None:
                    continue
                self._busy.add(delivery.webhook_id)
            status, error = self._send(*send)
            with self._cond:
                self._busy.discard(delivery.webhook_id)
                for waiting in self._deferred.pop(delivery.webhook_id, []):
                    heapq.heappush(self._heap, waiting)
                if delivery.generation == self.generation:
                    self._finish(delivery, status, error)
                self._cond.notify_all()

    def _send(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int | None, str | None]:
        try:
            response = requests.post(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as error:
            return None, type(error).__name__
        return response.status_code, None

    def _finish(self, delivery: Delivery, status: int | None, error: str | None) -> None:
        ok = status is not None and 200 <= status < 300
        meta = delivery.payload["meta"]
        self.log.append(
            {
                "webhook_id": delivery.webhook_id,
                "event_id": meta["id"],
                "action": meta["action"],
                "entity": meta["entity"],
                "entity_id": meta["entity_id"],
                "attempt": delivery.attempt,
                "duplicate": delivery.duplicate,
                "http_status": status,
                "error": error,
                "ok": ok,
                "time": rfc3339(utc_now()),
            }
        )
        retry_in = self.sim.record_delivery(delivery, status, ok)
        if retry_in is not None:
            retry = Delivery(
                time.monotonic() + retry_in,
                next(self._seq),
                delivery.webhook_id,
                delivery.payload,
                attempt=delivery.attempt + 1,
                generation=delivery.generation,
            )
            heapq.heappush(self._heap, retry)


def delivery_request(
    webhook: dict[str, Any], payload: dict[str, Any], attempt: int
) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of one delivery attempt."""
    if payload["meta"].get("v") == 1:
        payload = {**payload, "retry": attempt - 1}
    else:
        payload = {**payload, "meta": {**payload["meta"], "attempt": attempt}}
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Pipedrive Webhooks"}
    if webhook.get("http_auth_user") is not None:
        pair = f"{webhook['http_auth_user']}:{webhook.get('http_auth_password') or ''}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    secret = webhook.get("_hmac_secret")
    if secret:
        # Not a Pipedrive feature: lets tests exercise the receiver's HMAC mode.
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Pipedrive-Signature"] = digest
    return body, headers
