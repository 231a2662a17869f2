"""The whole product in one process: both simulators, an embedded database and worker, the
webhook receiver, and a story that runs IFS → Pipedrive → IFS with one failure replayed."""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from connector.jobs import PLAN_SYNC
from connector.storage.audit import FAILED, SUCCEEDED
from connector.storage.idmap import IdMap
from connector.storage.webhook_events import FINISHED, WebhookEvents, WebhookEventStatus

if TYPE_CHECKING:
    from simulators.ifs.state import IfsSim
    from simulators.pipedrive.state import PipedriveSim

DEMO_TENANT = "demo"
BAD_CURRENCY = "EURO"  # Pipedrive accepts 3-letter codes only: the demo's injected failure
WAIT_S = 120.0  # how long the demo waits for webhooks or replays to finish


@dataclass
class DemoResult:
    customers: int = 0
    orders: int = 0
    organizations_created: int = 0
    deals_created: int = 0
    stage_changes_pushed: int = 0
    ifs_orders_updated: int = 0
    failed: int = 0
    replayed: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"seconds": round(self.seconds, 2)}


class Story:
    """Runs the demo; `say` prints narration (silent with --json)."""

    def __init__(
        self, customers: int, orders: int, folder: Path, say: Callable[[str], None], bars: bool
    ) -> None:
        self.customers, self.orders = customers, orders
        self.folder, self.say, self.bars = folder, say, bars
        self.result = DemoResult(customers=customers, orders=orders)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Start everything the story needs, and stop it all afterwards."""
        from sandbox.embedded import embedded_stack
        from simulators.ifs.settings import IfsSimSettings
        from simulators.pipedrive.settings import PipedriveSimSettings

        with embedded_stack(
            self.folder,
            DEMO_TENANT,
            ifs=IfsSimSettings(),
            # A Pipedrive plan with room for the demo's pace; webhooks retried quickly.
            pipedrive=PipedriveSimSettings(api_token_burst=100, webhook_delay_scale=0.02),
            tenant_overrides={"name": "Demo Boatworks", "pipedrive": {"burst_limit": 100}},
            webhook_auth="basic",
        ) as stack:
            self.runtime = stack.runtime
            self.ifs: IfsSim = stack.ifs
            self.pipedrive: PipedriveSim = stack.pipedrive
            yield

    # -- the story ---------------------------------------------------------------------

    def run(self) -> DemoResult:
        started = time.monotonic()
        from simulators.ifs.schema import customer_order

        self.ifs.seed(customers=self.customers, orders=self.orders, seed=2026)
        order_nos = self.ifs.keys(customer_order())
        # Some orders a sales user will move; make sure they start Planned.
        self.moved = order_nos[1:4]
        for order_no in self.moved:
            self.ifs.edit_order(order_no, Objstate="Planned")
        self.broken = order_nos[0]
        self.ifs.edit_order(self.broken, CurrencyCode=BAD_CURRENCY)
        self.say(
            f"IFS Cloud simulator: {self.customers} customers, {self.orders} sales orders "
            f"(order {self.broken} has currency {BAD_CURRENCY!r}, which Pipedrive will refuse)"
        )
        self._before_after("before")

        self.say("\n1. Sync IFS → Pipedrive (customers → organizations, orders → deals)")
        summary = self._sync()
        self.say(
            f"   created {summary.created}, failed {summary.failed}; "
            f"the failure: {summary.failures[0]['error'] if summary.failures else 'none'}"
        )
        self._before_after("after")
        self._sample_deals()

        self.say("\n2. A sales user moves deals in Pipedrive; webhooks flow back to IFS")
        self._register_webhook()
        self._move_deals()

        self.say("\n3. The failed order is fixed in IFS and replayed from the audit log")
        self._replay()

        self.result.organizations_created = self._count_created("customer")
        self.result.deals_created = self._count_created("order")
        self.result.failed = self._failed_now()
        self.result.requests = self._requests()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _sync(self) -> Any:
        from cli.commands.sync import wait_for_run
        from workers.app import celery_app

        run_id = uuid.uuid4().hex
        celery_app.send_task(
            PLAN_SYNC,
            kwargs={"tenant": DEMO_TENANT, "entity": "all", "run_id": run_id},
        )
        return wait_for_run(
            self.runtime.database, run_id, 2, timeout_s=300, show_progress=self.bars
        )

    def _count_created(self, entity: str) -> int:
        return len(IdMap(self.runtime.database).linked_pipedrive_ids(DEMO_TENANT, entity))

    def _before_after(self, moment: str) -> None:
        stats = self.pipedrive.stats()["records"]
        self.say(
            f"   {moment:<6}  IFS customers {self.customers:>4}  orders {self.orders:>4}   |   "
            f"Pipedrive organizations {stats.get('organization', 0):>4}  "
            f"deals {stats.get('deal', 0):>4}"
        )

    def _sample_deals(self) -> None:
        from connector.pipedrive.provisioning import FieldKeys
        from connector.storage.idmap import IdMap
        from connector.storage.tenant_state import DatabaseTenantState

        state = DatabaseTenantState(self.runtime.database).get(DEMO_TENANT, "field_keys")
        if state is None:
            return
        keys = FieldKeys.from_json(state).deal
        idmap = IdMap(self.runtime.database)
        self.say(
            f"   {'ORDER':<13}{'VALUE':>12} {'CUR':<4} {'IFS STATUS':<19}"
            f"{'COST CTR':<10}{'PROFIT CTR':<11}{'REGION':<7}"
        )
        from simulators.ifs.schema import customer_order

        for order_no in self.ifs.keys(customer_order())[1:6]:
            entry = idmap.get(DEMO_TENANT, "order", order_no)
            if entry is None or entry.pipedrive_id is None:
                continue
            deal = self.pipedrive.get("deal", entry.pipedrive_id)
            fields = deal.get("custom_fields") or {}
            self.say(
                f"   {order_no:<13}{deal.get('value', 0):>12,.2f} {deal.get('currency', ''):<4} "
                f"{fields.get(keys['order_status']) or '':<19}"
                f"{fields.get(keys['cost_center']) or '':<10}"
                f"{fields.get(keys['profit_center']) or '':<11}"
                f"{fields.get(keys['region']) or '':<7}"
            )

    def _register_webhook(self) -> None:
        from connector.webhooks.registration import ensure_webhook

        status = ensure_webhook(self.runtime, DEMO_TENANT)
        self.say(f"   webhook {status.action} (id {status.webhook_id}), Basic auth from the vault")

    def _move_deals(self) -> None:
        from connector.pipedrive.provisioning import PipelineIds
        from connector.storage.idmap import IdMap
        from connector.storage.tenant_state import DatabaseTenantState

        pipeline = DatabaseTenantState(self.runtime.database).get(DEMO_TENANT, "pipeline")
        assert pipeline is not None
        stages = PipelineIds.from_json(pipeline).stage_ids
        idmap = IdMap(self.runtime.database)
        moves: list[tuple[str, dict[str, Any], str]] = [
            (self.moved[0], {"stage_id": stages["Released"]}, "stage → Released"),
            (self.moved[1], {"stage_id": stages["Released"]}, "stage → Released"),
            (self.moved[2], {"status": "won"}, "marked won"),
        ]
        before = {no: self._ifs_view(no) for no, _, _ in moves}
        for order_no, change, _ in moves:
            entry = idmap.get(DEMO_TENANT, "order", order_no)
            assert entry is not None and entry.pipedrive_id is not None
            self.pipedrive.move_deal(entry.pipedrive_id, **change)
        self._wait(lambda: self._events_done(len(moves)), "webhooks", len(moves))
        self.say(f"   {'ORDER':<13}{'PIPEDRIVE':<18}{'IFS BEFORE':<24}IFS AFTER")
        for order_no, _, label in moves:
            after = self._ifs_view(order_no)
            if after != before[order_no]:
                self.result.ifs_orders_updated += 1
            self.say(f"   {order_no:<13}{label:<18}{before[order_no]:<24}{after}")
        self.result.stage_changes_pushed = self._events_applied()

    def _ifs_view(self, order_no: str) -> str:
        order = self.ifs.get_order(order_no)
        crm = f", Cf_Crm_Stage={order['Cf_Crm_Stage']}" if order.get("Cf_Crm_Stage") else ""
        return f"{order['Objstate']}{crm}"

    def _events_done(self, expected: int) -> int:
        counts = WebhookEvents(self.runtime.database).counts_by_status(DEMO_TENANT)
        done = sum(counts.get(status, 0) for status in (*FINISHED, WebhookEventStatus.FAILED))
        return min(done, expected)

    def _events_applied(self) -> int:
        counts = WebhookEvents(self.runtime.database).counts_by_status(DEMO_TENANT)
        return counts.get(WebhookEventStatus.APPLIED, 0)

    def _wait(self, progress: Callable[[], int], label: str, total: int) -> None:
        """Wait until `progress()` reaches `total`, with a progress bar on stderr."""
        from connector.polling import wait_until

        with ExitStack() as cleanup:
            bar = None
            if self.bars:
                bar = cleanup.enter_context(
                    click.progressbar(length=total, label=f"   {label}", file=sys.stderr)
                )

            def reached() -> bool:
                done = progress()
                if bar is not None:
                    bar.update(done - bar.pos)
                return done >= total

            finished = wait_until(reached, timeout=WAIT_S, interval=0.1)
        if not finished:
            raise click.ClickException(f"demo: {label} did not finish within {WAIT_S:.0f} s")

    def _replay(self) -> None:
        from connector.replay import Replay
        from connector.storage.audit import AuditLog
        from workers.app import enqueue

        log = AuditLog(self.runtime.database)
        replays = Replay(log, enqueue)
        failed = replays.latest_failed(DEMO_TENANT)
        for row in failed:
            self.say(f"   audit row {row.id}: {row.entity} {row.record_key}: {row.error}")
        self.ifs.edit_order(self.broken, CurrencyCode="EUR")
        self.say(f"   an IFS user corrects {self.broken}'s currency to EUR; replaying")
        queued = [row.id for row in failed if replays.requeue(row)]

        def replays_done() -> int:
            rows = log.list(tenant=DEMO_TENANT, limit=50)
            return sum(1 for r in rows if r.replay_of in queued and r.status in (SUCCEEDED, FAILED))

        self._wait(replays_done, "replays", len(queued))
        succeeded = [
            r
            for r in log.list(tenant=DEMO_TENANT, limit=50)
            if r.replay_of in queued and r.status == SUCCEEDED
        ]
        self.result.replayed = len(succeeded)
        for row in succeeded:
            self.say(f"   replay of row {row.replay_of}: {row.operation} {row.status}")

    def _failed_now(self) -> int:
        from connector.storage.audit import AuditLog

        return len(AuditLog(self.runtime.database).latest_failed(DEMO_TENANT))

    def _requests(self) -> dict[str, int]:
        ifs_requests = sum(self.ifs.stats()["requests"].values())
        return {"ifs": ifs_requests, "pipedrive": int(self.pipedrive.stats()["requests_total"])}
