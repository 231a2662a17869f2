"""Beat's schedule: built per tenant, and rebuilt by LiveScheduler when the tenants file changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from celery import Celery

from connector import jobs
from connector.runtime import Runtime
from connector.settings import Settings
from connector.tenants import TenantConfig, parse_tenants
from tests.connector.webhooks.support import KEY, tenant_body, unique_tenant
from workers.runtime import set_runtime
from workers.schedule import LiveScheduler, build_beat_schedule


def _tenants_in(scheduler: LiveScheduler) -> set[str]:
    # Celery's own entries (celery.backend_cleanup) carry no tenant.
    return {name.split(":")[0] for name in scheduler.schedule if ":" in name}


def test_a_schedule_celery_refuses_leaves_out_that_tenant_only() -> None:
    tenants = parse_tenants({"tenants": {"acme": tenant_body(), "globex": tenant_body()}})
    # As if validation had let it through: beat must still schedule every other tenant.
    broken = TenantConfig.model_construct(**{**dict(tenants["globex"]), "schedule": "0 0 31 2 *"})
    problems: dict[str, str] = {}
    schedule = build_beat_schedule([tenants["acme"], broken], problems)
    assert sorted(schedule) == ["acme:ensure-webhook", "acme:reconcile-stages", "acme:sync"]
    assert list(problems) == ["globex"] and "key 'schedule'" in problems["globex"]


@pytest.fixture
def live_runtime(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Runtime, Path]]:
    tenants_file = tmp_path / "tenants.yaml"
    runtime = Runtime(
        # A deployment's settings: beat refuses the embedded defaults (memory://, SQLite).
        Settings(
            database_url=postgres_url,
            broker_url="redis://127.0.0.1:6379/0",
            encryption_keys=KEY,
            tenants_file=tenants_file,
        )
    )
    live = runtime.go_live(interval_s=0.0)
    assert live is not None
    set_runtime(runtime)
    yield runtime, tenants_file
    set_runtime(None)
    runtime.close()


def test_the_live_scheduler_adds_and_removes_tenants_as_the_file_changes(
    live_runtime: tuple[Runtime, Path], tmp_path: Path
) -> None:
    _, tenants_file = live_runtime
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    tenants_file.write_text(yaml.safe_dump({"tenants": {acme: tenant_body()}}))
    app = Celery("schedule-test", broker="memory://")
    app.conf.beat_max_loop_interval = 300
    scheduler = LiveScheduler(app=app, schedule_filename=str(tmp_path / "beat"))
    try:
        assert _tenants_in(scheduler) == {acme}
        assert scheduler.max_interval <= 1.0  # wakes often enough to notice a change
        # The sweeper of lost webhook events runs whatever the tenants.
        assert scheduler.schedule["sweep-webhook-events"].task == jobs.SWEEP_WEBHOOK_EVENTS

        body = {**tenant_body(), "schedule": "* * * * *"}
        broken = {**tenant_body(), "schedul": "*/5 * * * *"}
        tenants_file.write_text(yaml.safe_dump({"tenants": {acme: broken, globex: body}}))
        scheduler.tick()
        assert f"{globex}:sync" in scheduler.schedule
        assert f"{acme}:sync" in scheduler.schedule  # its last good configuration stays

        tenants_file.write_text(yaml.safe_dump({"tenants": {globex: body}}))
        scheduler.tick()
        assert _tenants_in(scheduler) == {globex}
    finally:
        scheduler.close()
