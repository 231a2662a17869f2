"""`ml-connector status`: last run and waiting failures after a real sync, operator mistakes."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime

import pytest

from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import WebhookEvents, WebhookEventStatus
from connector.webhooks.events import WebhookEventData
from simulators.ifs.schema import customer_order


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
def test_status_after_a_sync_with_one_failure_shows_the_run_and_the_waiting_row(
    stack_factory,
) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=1)
    bad = stack.ifs.keys(customer_order())[0]
    stack.ifs.edit_order(bad, CurrencyCode="EURO")  # Pipedrive answers 400 for this
    stack.start_workers(count=1, concurrency=2)
    synced = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "300")
    assert synced.returncode == 2, synced.stdout + synced.stderr + stack.worker_logs()
    run_id = json.loads(synced.stdout.splitlines()[-1])["run_id"]
    # A registered webhook with one event whose push to IFS failed.
    DatabaseTenantState(stack.runtime.database).put(
        stack.tenant, "webhook", {"webhook_id": 77, "subscription_url": "https://x/y"}
    )
    received = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    WebhookEvents(stack.runtime.database).add(
        stack.tenant,
        WebhookEventData(
            event_id="e-1",
            version=2,
            action="change",
            entity="deal",
            entity_id=None,
            change_source=None,
            user_id=None,
            timestamp=None,
        ),
        {},
        status=WebhookEventStatus.FAILED,
        received_at=received,
    )

    result = stack.cli("status", "--tenant", stack.tenant, "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (status,) = document["tenants"]
    assert status["tenant"] == stack.tenant
    assert status["last_run"]["run_id"] == run_id
    assert status["last_run"]["state"] == "finished"
    assert (status["last_run"]["created"], status["last_run"]["failed"]) == (8, 1)
    assert status["failed_waiting"] == 1 and status["failed_keys"] == [f"order {bad}"]
    assert status["webhook"]["registered"] and status["webhook"]["webhook_id"] == 77
    assert status["webhook"]["events_failed"] == 1
    assert status["webhook"]["last_event_at"].startswith("2026-11-28T10:00")
    assert document["queue"]["depths"] == {
        stack.env["CONNECTOR_QUEUE"]: 0,
        stack.env["CONNECTOR_INTERACTIVE_QUEUE"]: 0,
    }

    text = stack.cli("status", "--tenant", stack.tenant)
    assert text.returncode == 0, text.stderr
    assert "created 8, updated 0" in text.stdout and "failed 1" in text.stdout, text.stdout
    assert f"failed records waiting: 1 (order {bad})" in text.stdout
    assert f"replay --failed --tenant {stack.tenant}" in text.stdout
    assert "webhook: registered (id 77)" in text.stdout and "1 failed" in text.stdout
    assert f"queue: {stack.env['CONNECTOR_QUEUE']} 0 waiting" in text.stdout

    # Once the record is fixed and replayed, nothing waits any more.
    stack.ifs.edit_order(bad, CurrencyCode="EUR")
    failed_row = [
        json.loads(line)
        for line in stack.cli(
            "audit", "list", "--tenant", stack.tenant, "--status", "failed", "--json"
        ).stdout.splitlines()
    ]
    replayed = stack.cli("replay", str(failed_row[0]["id"]), "--wait")
    assert replayed.returncode == 0 and "succeeded" in replayed.stdout, replayed.stdout
    after = json.loads(stack.cli("status", "--tenant", stack.tenant, "--json").stdout)
    assert after["tenants"][0]["failed_waiting"] == 0


@pytest.mark.integration
def test_remote_flag_asks_pipedrive_for_the_webhook(stack_factory) -> None:
    stack = stack_factory()
    url = f"https://connector.example.com/webhooks/pipedrive/{stack.tenant}"
    stack.write_tenants(webhook={"subscription_url": url})
    before = json.loads(stack.cli("status", "--remote", "--json").stdout)["tenants"][0]
    assert not before["webhook"]["registered"]
    assert before["webhook"]["remote"] == {"webhooks": [], "active": False}
    assert any("no active webhook" in problem for problem in before["problems"])
    ensured = stack.cli("webhooks", "ensure", stack.tenant)
    assert ensured.returncode == 0, ensured.stderr

    after = json.loads(stack.cli("status", "--remote", "--json").stdout)["tenants"][0]

    webhook = after["webhook"]
    assert webhook["registered"] and webhook["subscription_url"] == url
    # deal changes, deal deletes, organization deletes: one webhook each
    remote_ids = [w["id"] for w in webhook["remote"]["webhooks"]]
    assert len(remote_ids) == 3 and webhook["webhook_id"] in remote_ids
    assert webhook["remote"]["active"] is True
    assert after["missing_credentials"] == []  # ensure stored the Basic credentials
    assert not any("webhook" in problem for problem in after["problems"]), after["problems"]


def test_unknown_tenant_is_a_clean_error(migrated) -> None:
    result = migrated("status", "--tenant", "nope")
    assert result.exit_code == 1
    assert "unknown tenant 'nope'" in result.output and "acme" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unmigrated_database_says_so(run) -> None:
    result = run("status")
    assert result.exit_code == 1
    assert "database not migrated: run `ml-connector db upgrade`" in result.output


def test_broker_down_and_missing_credentials_are_clear_lines(migrated) -> None:
    broker = f"redis://127.0.0.1:{_closed_port()}/0"
    migrated.env["CONNECTOR_BROKER_URL"] = broker

    result = migrated("status")

    assert result.exit_code == 0, result.output
    assert result.exception is None, result.exception
    lines = result.output.splitlines()
    assert "tenant acme" in lines and "tenant globex-nordic" in lines
    assert f"queue: broker unreachable at {broker}" in result.output
    assert "`ml-connector credentials set acme ifs client_secret`" in result.output
    assert "in-process limiter" in result.output  # no CONNECTOR_REDIS_URL here
    assert "last sync: never" in result.output


def test_without_a_redis_broker_the_queue_is_not_measured(migrated) -> None:
    migrated.env["CONNECTOR_BROKER_URL"] = None
    result = migrated("status", "--json")
    assert result.exit_code == 0, result.output
    queue = json.loads(result.output)["queue"]
    assert queue["depths"] is None and queue["error"] is None
    assert (
        queue["broker"] == "memory://localhost/"
        and "measured for Redis and RabbitMQ brokers only" in queue["note"]
    )


def test_a_tenants_file_only_a_worker_sees_broken_is_named_with_who_saw_it(
    migrated, tmp_path
) -> None:
    import yaml

    from connector.live_config import LiveConfig
    from connector.runtime import Runtime
    from connector.settings import Settings

    queue = f"status-{uuid.uuid4().hex[:8]}"  # this deployment's reports only
    migrated.env.update(
        {"CONNECTOR_REDIS_URL": "redis://127.0.0.1:6379/0", "CONNECTOR_QUEUE": queue}
    )
    # Another host's copy of the file, with a typo in globex-nordic's section.
    theirs = tmp_path / "their-tenants.yaml"
    document = yaml.safe_load(migrated.tenants.read_text())
    document["tenants"]["globex-nordic"]["schedul"] = "0 * * * *"
    theirs.write_text(yaml.safe_dump(document))
    settings = Settings(
        database_url=str(migrated.env["CONNECTOR_DATABASE_URL"]),
        encryption_keys=str(migrated.env["CONNECTOR_ENCRYPTION_KEYS"]),
        redis_url="redis://127.0.0.1:6379/0",
        queue=queue,
        tenants_file=theirs,
    )
    worker = Runtime(settings)
    worker.live = LiveConfig(worker, theirs, role="worker")
    try:
        assert worker.refresh_if_stale()

        result = migrated("status")

        assert result.exit_code == 0, result.output
        (line,) = [row for row in result.output.splitlines() if "reported by" in row]
        assert line.startswith(f"! tenants file reported by worker on {socket.gethostname()}")
        assert "tenant 'globex-nordic': key 'schedul': unknown key" in line
        assert "did you mean 'schedule'?" in line and "expected one of:" in line
        document = json.loads(migrated("status", "--json").output)
        (check,) = document["config_checks"]
        assert check["role"] == "worker" and check["problems"][0][0] == "globex-nordic"
    finally:
        assert worker.coordination.redis is not None
        worker.coordination.redis.delete(f"mlc:config-checks:{queue}")
        worker.close()


def _stored(migrated, tenant: str, count: int) -> None:
    from connector.storage.database import Database
    from connector.storage.work_items import WorkItems

    database = Database(str(migrated.env["CONNECTOR_DATABASE_URL"]))
    page = [{"entity": "order", "tenant": tenant, "key": f"O{i}"} for i in range(count)]
    WorkItems(database).add(tenant, f"{tenant}-run", "ml_connector.sync_order", page)
    database.dispose()


def test_stored_records_are_shown_and_a_tenant_gone_from_the_file_keeps_its_own(
    migrated,
) -> None:
    _stored(migrated, "acme", 3)
    _stored(migrated, "acme-typo", 2)  # the id it had before an edit of the file

    document = json.loads(migrated("status", "--json").output)

    (acme,) = [each for each in document["tenants"] if each["tenant"] == "acme"]
    backlog = acme["backlog"]
    assert (backlog["waiting"], backlog["due"], backlog["in_flight"]) == (3, 3, 0)
    assert backlog["oldest_waiting_at"] is not None and backlog["waits_for"] == []
    (gone,) = document["tenants_not_in_file"]
    assert (gone["tenant"], gone["waiting"], gone["ours"]) == ("acme-typo", 2, False)
    text = migrated("status").output
    assert "stored records: 3 waiting (3 due, oldest stored" in text, text
    assert "! tenant acme-typo not in the tenants file: 2 stored record(s) kept" in text, text
    assert "`ml-connector tenant drop-backlog acme-typo`" in text

    refused = migrated("tenant", "drop-backlog", "acme", "--yes")
    assert refused.exit_code == 1 and "is in" in refused.output, refused.output
    dropped = migrated("tenant", "drop-backlog", "acme-typo", "--yes")
    assert dropped.exit_code == 0, dropped.output
    assert "dropped 2 stored record(s) of acme-typo" in dropped.output

    after = json.loads(migrated("status", "--json").output)
    assert after["tenants_not_in_file"] == []
    rows = [
        json.loads(line)
        for line in migrated("audit", "list", "--tenant", "acme-typo", "--json").output.splitlines()
    ]
    assert [(row["operation"], row["status"]) for row in rows] == [("drop_backlog", "skipped")]
    assert "2 stored record(s) dropped: dropped by an operator" in rows[0]["error"]
