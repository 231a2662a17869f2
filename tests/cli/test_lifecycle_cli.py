"""`reconcile`, `sync --dry-run` and `audit history` as an operator runs them (real processes)
on one stack whose sales users moved, deleted and lost deals while no webhook came through."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from connector.storage.idmap import ORDER, IdMap
from connector.sync.engine import TenantSync
from simulators.ifs.schema import customer_order
from tests.connector.sync.support import run_sync

pytestmark = pytest.mark.integration


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def test_reconcile_follows_deleted_deals_and_dry_run_and_history_say_what_they_are(
    stack_factory,
) -> None:
    stack = stack_factory(tenant_overrides={"lifecycle": {"on_pipedrive_delete": "respect"}})
    stack.ifs.seed(customers=3, orders=6, seed=21)
    moved, deleted, edited, gone = stack.ifs.keys(customer_order())[:4]
    for order_no in (moved, gone):
        stack.ifs.edit_order(order_no, Objstate="Planned")
    sync = TenantSync(stack.runtime, stack.tenant)
    run_sync(sync)
    idmap = IdMap(stack.runtime.database)
    deal = {
        key: idmap.get(stack.tenant, ORDER, key).pipedrive_id
        for key in (moved, deleted, edited, gone)
    }
    released = sync.layout().stage_ids["Released"]
    user = stack.pipedrive.settings.app_user_id
    # Sales users act while no webhook reaches the connector.
    stack.pipedrive.move_deal(deal[moved], stage_id=released, user_id=user)
    stack.pipedrive.move_deal(deal[gone], stage_id=released, user_id=user)
    stack.ifs.remove(customer_order(), gone)  # ... and an IFS user removes that order
    for order_no in (deleted, edited):
        stack.pipedrive.delete("deal", deal[order_no], "app", user)
    stack.ifs.edit_order(edited, Cf_Cost_Center="CC-AFTER-DELETE")

    # --full reads every linked deal, so the dry run meets the deletes no webhook reported.
    dry = _json(stack.cli("sync", stack.tenant, "--dry-run", "--full", "--json"))

    by_key = {record["key"]: record for record in dry["records"]}
    for order_no in (deleted, edited):
        assert by_key[order_no]["operation"] == "tombstoned", by_key[order_no]
        assert "on_pipedrive_delete is respect" in by_key[order_no]["reason"]
        assert idmap.get(stack.tenant, ORDER, order_no).tombstoned_at is None  # nothing written
    assert dry["counts"]["failed"] == 0, dry

    first = _json(stack.cli("reconcile", stack.tenant, "--json"))
    again = _json(stack.cli("reconcile", stack.tenant, "--json"))

    assert (first["applied"], first["deleted"], first["failed"]) == (1, 2, 0), first
    assert stack.ifs.get_order(moved)["Objstate"] == "Released"
    assert (again["applied"], again["deleted"], again["failed"]) == (0, 0, 0), again
    for order_no in (deleted, edited):
        assert idmap.get(stack.tenant, ORDER, order_no).tombstoned_at is not None
    dry = _json(stack.cli("sync", stack.tenant, "--dry-run", "--json"))
    tombstoned = {r["key"] for r in dry["records"] if r["operation"] == "tombstoned"}
    assert tombstoned == {deleted, edited} and dry["counts"]["tombstoned"] == 2, dry

    story = _json(stack.cli("audit", "history", stack.tenant, ORDER, edited, "--json"))
    assert story["state"].startswith("tombstoned since"), story["state"]
    whats = [chapter["what"] for chapter in story["chapters"]]
    assert whats[0] == "create" and "tombstoned" in whats, whats
    text = stack.cli("audit", "history", stack.tenant, ORDER, edited)
    assert text.returncode == 0 and "tombstoned" in text.stdout, text.stdout + text.stderr

    unknown_key = stack.cli("audit", "history", stack.tenant, ORDER, "NO-SUCH-ORDER")
    unknown_tenant = stack.cli("reconcile", "no-such-tenant")
    for result in (unknown_key, unknown_tenant):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "has no order 'NO-SUCH-ORDER'" in unknown_key.stderr
    assert "no-such-tenant" in unknown_tenant.stderr
