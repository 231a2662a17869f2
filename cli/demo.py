"""The whole product in one process: both simulators, an embedded database and worker, the
webhook receiver, and a story that runs IFS → Pipedrive → IFS with one failure replayed."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from cryptography.fernet import Fernet
from sqlalchemy import func, select

DEMO_TENANT = "demo"
BAD_CURRENCY = "EURO"  # Pipedrive accepts 3-letter codes only: the demo's injected failure


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
        return {
            "customers": self.customers,
            "orders": self.orders,
            "organizations_created": self.organizations_created,
            "deals_created": self.deals_created,
            "stage_changes_pushed": self.stage_changes_pushed,
            "ifs_orders_updated": self.ifs_orders_updated,
            "failed": self.failed,
            "replayed": self.replayed,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
        }


def _embedded_environment(folder: Path) -> None:
    # The demo always runs embedded, whatever the shell exports: its own SQLite file, no
    # broker, no Redis. Settings are read once per process, so set them before any use.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ["CONNECTOR_DATABASE_URL"] = f"sqlite:///{folder / 'connector.db'}"
    os.environ["CONNECTOR_BROKER_URL"] = "memory://localhost/"
    os.environ.pop("CONNECTOR_REDIS_URL", None)
    os.environ.setdefault("CONNECTOR_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    os.environ["CONNECTOR_TENANTS_FILE"] = str(folder / "tenants.yaml")
    # The story is told on stdout; worker chatter would drown it (errors still show).
    os.environ.setdefault("CONNECTOR_LOG_LEVEL", "WARNING")
    from connector.settings import get_settings

    get_settings.cache_clear()


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
        _embedded_environment(self.folder)
        import yaml

        from connector.runtime import Runtime
        from connector.settings import get_settings
        from connector.storage.migrate import upgrade
        from connector.tenants import parse_tenants
        from simulators.ifs.app import create_app as create_ifs
        from simulators.ifs.settings import IfsSimSettings
        from simulators.pipedrive.app import create_app as create_pipedrive
        from simulators.pipedrive.settings import PipedriveSimSettings
        from simulators.serving import RunningServer, free_port
        from webhook_receiver.app import create_app as create_receiver
        from workers.app import celery_app
        from workers.embedded import embedded_worker
        from workers.runtime import set_runtime

        settings = get_settings()
        celery_app.conf.update(broker_url="memory://localhost/")
        with ExitStack() as stack:
            ifs_settings = IfsSimSettings()
            self.ifs_app = create_ifs(ifs_settings)
            ifs = stack.enter_context(RunningServer(self.ifs_app))
            # A Pipedrive plan with room for the demo's pace; webhooks retried quickly.
            pd_settings = PipedriveSimSettings(api_token_burst=100, webhook_delay_scale=0.02)
            self.pd_app = create_pipedrive(pd_settings)
            pipedrive = stack.enter_context(RunningServer(self.pd_app))
            stack.callback(self.pd_app.extensions["pipedrive_sim"].stop)
            pd_settings.api_domain = pipedrive.url
            upgrade(settings.database_url)

            receiver_port = free_port()
            receiver_url = f"http://127.0.0.1:{receiver_port}"
            tenant_doc = {
                "tenants": {
                    DEMO_TENANT: {
                        "name": "Demo Boatworks",
                        "ifs": {
                            "base_url": ifs.url,
                            "namespace": ifs_settings.namespace,
                            "client_id": next(iter(ifs_settings.clients)),
                        },
                        "pipedrive": {
                            "api_domain": pipedrive.url,
                            "burst_limit": 100,
                            "integration_user_id": pd_settings.integration_user_id,
                        },
                        "webhook": {
                            "auth": "basic",
                            "subscription_url": f"{receiver_url}/webhooks/pipedrive/{DEMO_TENANT}",
                        },
                    }
                }
            }
            Path(settings.tenants_file).write_text(yaml.safe_dump(tenant_doc, sort_keys=False))
            tenants = parse_tenants(tenant_doc)
            self.runtime = Runtime(settings, tenants=tenants)
            stack.callback(self.runtime.close)
            stack.enter_context(
                RunningServer(create_receiver(runtime=self.runtime), port=receiver_port)
            )
            set_runtime(self.runtime)
            self.runtime.vault.set(
                DEMO_TENANT, "ifs", "client_secret", next(iter(ifs_settings.clients.values()))
            )
            self.runtime.vault.set(DEMO_TENANT, "pipedrive", "api_token", pd_settings.api_tokens[0])
            stack.enter_context(embedded_worker(concurrency=4))
            yield

    @property
    def ifs(self) -> Any:
        return self.ifs_app.extensions["ifs_sim"]

    @property
    def pipedrive(self) -> Any:
        return self.pd_app.extensions["pipedrive_sim"]

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
            "ml_connector.plan_sync",
            kwargs={"tenant": DEMO_TENANT, "entity": "all", "run_id": run_id},
        )
        return wait_for_run(
            self.runtime.database, run_id, 2, timeout_s=300, show_progress=self.bars
        )

    def _count_created(self, entity: str) -> int:
        from connector.storage.models import IdMapEntry

        with self.runtime.database.session() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        IdMapEntry.tenant == DEMO_TENANT,
                        IdMapEntry.entity == entity,
                        IdMapEntry.pipedrive_id.is_not(None),
                    )
                )
                or 0
            )

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
        from connector.storage.models import WebhookEvent

        with self.runtime.database.session() as session:
            done = session.scalar(
                select(func.count()).where(
                    WebhookEvent.tenant == DEMO_TENANT,
                    WebhookEvent.status.in_(("applied", "ignored", "failed")),
                )
            )
        return min(int(done or 0), expected)

    def _events_applied(self) -> int:
        from connector.storage.models import WebhookEvent

        with self.runtime.database.session() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        WebhookEvent.tenant == DEMO_TENANT, WebhookEvent.status == "applied"
                    )
                )
                or 0
            )

    def _wait(self, progress: Callable[[], int], label: str, total: int) -> None:
        deadline = time.monotonic() + 120
        if self.bars:
            stderr = sys.stderr
            with click.progressbar(length=total, label=f"   {label}", file=stderr) as bar:
                while (done := progress()) < total and time.monotonic() < deadline:
                    bar.update(done - bar.pos)
                    time.sleep(0.1)
                bar.update(progress() - bar.pos)
        else:
            while progress() < total and time.monotonic() < deadline:
                time.sleep(0.1)
        if progress() < total:
            raise click.ClickException(f"demo: {label} did not finish within 120 s")

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
            return sum(
                1 for r in rows if r.replay_of in queued and r.status in ("succeeded", "failed")
            )

        self._wait(replays_done, "replays", len(queued))
        succeeded = [
            r
            for r in log.list(tenant=DEMO_TENANT, limit=50)
            if r.replay_of in queued and r.status == "succeeded"
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
