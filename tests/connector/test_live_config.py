"""A live runtime follows the tenants file and the vault: changes, broken sections, reports."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from connector.errors import UnknownTenantError
from connector.live_config import LiveConfig, config_checks
from connector.polling import wait_until
from connector.runtime import Runtime
from connector.settings import Settings
from tests.connector.webhooks.support import KEY, tenant_body, unique_tenant


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    return tmp_path / "tenants.yaml"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime(postgres_url: str, tenants_file: Path, clock: Clock) -> Iterator[Runtime]:
    settings = Settings(database_url=postgres_url, encryption_keys=KEY, tenants_file=tenants_file)
    runtime = Runtime(settings)
    runtime.live = LiveConfig(runtime, tenants_file, interval_s=5.0, clock=clock)
    yield runtime
    runtime.close()


def _write(path: Path, tenants: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({"tenants": tenants}))


def _with_secrets(runtime: Runtime, *tenants: str) -> None:
    for tenant in tenants:
        runtime.vault.set(tenant, "ifs", "client_secret", "s3cret")
        runtime.vault.set(tenant, "pipedrive", "api_token", "t0ken")


def _errors(tenant: str) -> float:
    value = REGISTRY.get_sample_value("mlc_config_reload_errors_total", {"tenant": tenant})
    return value or 0.0


def _check(runtime: Runtime, clock: Clock) -> bool:
    clock.now += 5.0
    return runtime.refresh_if_stale()


def test_a_tenant_added_to_the_file_is_served_at_the_next_check_not_before(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    _write(tenants_file, {acme: tenant_body()})
    assert list(runtime.tenants) == [acme]
    _write(tenants_file, {acme: tenant_body(), globex: tenant_body()})
    clock.now += 4.0
    assert not runtime.refresh_if_stale()  # checked less than the interval ago
    with pytest.raises(UnknownTenantError):
        runtime.tenant(globex)
    clock.now += 1.0
    assert runtime.refresh_if_stale()
    assert runtime.tenant(globex).id == globex


def test_an_unchanged_file_and_vault_keep_every_cached_sync(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme = unique_tenant("acme")
    _write(tenants_file, {acme: tenant_body()})
    _with_secrets(runtime, acme)
    sync = runtime.tenant_sync(acme)
    assert not _check(runtime, clock)
    assert runtime.tenant_sync(acme) is sync


def test_a_typo_keeps_the_last_good_configuration_of_that_tenant_only_and_says_so(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme, globex, initech = (unique_tenant(p) for p in ("acme", "globex", "initech"))
    _write(tenants_file, {acme: tenant_body(), globex: tenant_body()})
    assert set(runtime.tenants) == {acme, globex}
    served = runtime.tenant(globex)

    broken = {**tenant_body(), "schedul": "* * * * *"}
    changed_acme = {**tenant_body(), "schedule": "*/5 * * * *"}
    _write(tenants_file, {acme: changed_acme, globex: broken, initech: tenant_body()})
    before = _errors(globex)
    assert _check(runtime, clock)

    assert runtime.tenant(globex) is served  # the last good one
    assert runtime.tenant(acme).schedule == "*/5 * * * *"  # the others still change
    assert runtime.tenant(initech).id == initech  # and a new valid tenant is added
    assert runtime.live is not None
    (message, note) = runtime.live.problems[globex]
    assert f"tenant '{globex}': key 'schedul': unknown key (did you mean 'schedule'?)" in message
    assert "keeping its last good configuration" in note
    assert list(runtime.live.problems) == [globex]
    assert _errors(globex) == before + 1

    # Reported on every check until it is fixed, without being treated as a change.
    assert not _check(runtime, clock)
    assert _errors(globex) == before + 2

    _write(tenants_file, {acme: changed_acme, globex: tenant_body(), initech: tenant_body()})
    _check(runtime, clock)
    assert runtime.live.problems == {}
    assert _check(runtime, clock) is False and _errors(globex) == before + 2


def test_a_new_tenant_that_does_not_validate_is_not_served_and_reported(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    _write(tenants_file, {acme: tenant_body()})
    assert list(runtime.tenants) == [acme]
    _write(tenants_file, {acme: tenant_body(), globex: {**tenant_body(), "schedule": "61 * * * *"}})
    _check(runtime, clock)
    assert list(runtime.tenants) == [acme]
    assert runtime.live is not None
    message, note = runtime.live.problems[globex]
    assert "key 'schedule'" in message and "outside 0-59" in message
    assert "not served" in note


def test_an_unreadable_file_keeps_every_tenant_and_a_fixed_one_clears_the_problem(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme = unique_tenant("acme")
    _write(tenants_file, {acme: tenant_body()})
    _with_secrets(runtime, acme)
    sync = runtime.tenant_sync(acme)
    good = tenants_file.read_text()

    tenants_file.write_text("tenants: [unclosed\n")
    _check(runtime, clock)
    assert runtime.tenant_sync(acme) is sync
    assert runtime.live is not None
    assert "not valid YAML" in runtime.live.messages()[0]

    tenants_file.write_text("tenant:\n  - wrong shape\n")
    _check(runtime, clock)
    assert runtime.tenant_sync(acme) is sync
    assert "expected a mapping with a 'tenants:' mapping" in runtime.live.messages()[0]

    tenants_file.write_text(good)
    _check(runtime, clock)
    assert runtime.live.problems == {}
    assert runtime.tenant_sync(acme) is sync  # the same configuration: nothing rebuilt


def test_a_tenant_removed_from_a_valid_file_is_no_longer_served(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    _write(tenants_file, {acme: tenant_body(), globex: tenant_body()})
    assert set(runtime.tenants) == {acme, globex}
    _write(tenants_file, {acme: tenant_body()})
    _check(runtime, clock)
    assert list(runtime.tenants) == [acme]


def test_a_credential_set_or_deleted_rebuilds_that_tenants_sync_only(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    _write(tenants_file, {acme: tenant_body(), globex: tenant_body()})
    _with_secrets(runtime, acme, globex)
    acme_sync, globex_sync = runtime.tenant_sync(acme), runtime.tenant_sync(globex)

    runtime.vault.set(acme, "pipedrive", "api_token", "fixed-t0ken")
    assert _check(runtime, clock)
    rebuilt = runtime.tenant_sync(acme)
    assert rebuilt is not acme_sync
    assert rebuilt.pipedrive.http.auth.token == "fixed-t0ken"  # type: ignore[union-attr]
    assert runtime.tenant_sync(globex) is globex_sync

    runtime.vault.set(globex, "webhook", "hmac_secret", "x")
    assert _check(runtime, clock)
    assert runtime.vault.delete(globex, "webhook", "hmac_secret")
    assert _check(runtime, clock)
    assert runtime.tenant_sync(globex) is not globex_sync
    assert runtime.tenant_sync(acme) is rebuilt


def test_a_corrected_stage_map_reaches_a_new_sync(
    runtime: Runtime, tenants_file: Path, clock: Clock
) -> None:
    acme = unique_tenant("acme")
    _write(tenants_file, {acme: tenant_body()})
    _with_secrets(runtime, acme)
    old = runtime.tenant_sync(acme)
    stage_map = [{"ifs_state": "Planned", "stage": "Proposal"}]
    _write(tenants_file, {acme: {**tenant_body(), "stage_map": stage_map}})
    _check(runtime, clock)
    new = runtime.tenant_sync(acme)
    assert new is not old and new.tenant.stage_names == ["Proposal"]


def test_a_runtime_with_given_tenants_does_not_go_live(postgres_url: str) -> None:
    from connector.tenants import parse_tenants

    tenants = parse_tenants({"tenants": {"acme": tenant_body()}})
    runtime = Runtime(Settings(database_url=postgres_url, encryption_keys=KEY), tenants=tenants)
    assert runtime.go_live() is None
    assert runtime.refresh_if_stale() is False
    assert list(runtime.tenants) == ["acme"]


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:6379/0"], ids=["local", "redis"])
def test_each_check_is_published_with_role_host_pid_digest_and_problems(
    postgres_url: str, tenants_file: Path, clock: Clock, redis_url: str | None
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    settings = Settings(
        database_url=postgres_url,
        encryption_keys=KEY,
        tenants_file=tenants_file,
        redis_url=redis_url,
        queue=unique_tenant("queue"),  # one deployment's reports, not the other tests'
    )
    runtime = Runtime(settings)
    live = LiveConfig(runtime, tenants_file, interval_s=5.0, clock=clock, role="worker")
    runtime.live = live
    try:
        _write(tenants_file, {acme: tenant_body(), globex: {**tenant_body(), "schedul": "x"}})
        assert set(runtime.tenants) == {acme}
        (check,) = config_checks(runtime)
        assert (check.role, check.pid) == ("worker", os.getpid())
        assert check.digest is not None and len(check.digest) == 64
        ((tenant, (message, note)),) = check.problems
        assert tenant == globex and f"tenant '{globex}': key 'schedul'" in message
        assert "not served" in note

        # A role's own problems (beat: a cron Celery refuses) are published with the file's.
        live.note_role_problems({acme: ["Celery refuses it"]})
        (check,) = config_checks(runtime)
        assert dict(check.problems)[acme] == ["Celery refuses it"]

        live.note_role_problems({})
        _write(tenants_file, {acme: tenant_body(), globex: tenant_body()})
        _check(runtime, clock)
        (check,) = config_checks(runtime)
        assert check.problems == [] and set(runtime.tenants) == {acme, globex}
    finally:
        runtime.close()


def test_a_published_check_expires_when_its_process_stops_checking(postgres_url: str) -> None:
    from connector.coordination import Coordination

    coordination = Coordination.from_url("redis://127.0.0.1:6379/0")
    scope = unique_tenant("queue")
    try:
        coordination.publish_config_check(scope, "worker:h:1", '{"a": 1}', ttl_s=0.2)
        coordination.publish_config_check(scope, "beat:h:2", '{"b": 2}', ttl_s=30)
        assert sorted(coordination.config_checks(scope)) == ['{"a": 1}', '{"b": 2}']
        time.sleep(0.3)
        assert coordination.config_checks(scope) == ['{"b": 2}']
    finally:
        assert coordination.redis is not None
        coordination.redis.delete(f"mlc:config-checks:{scope}")
        coordination.close()


def test_watching_follows_the_file_without_any_work_arriving(
    postgres_url: str, tenants_file: Path
) -> None:
    acme, globex = unique_tenant("acme"), unique_tenant("globex")
    _write(tenants_file, {acme: tenant_body()})
    runtime = Runtime(
        Settings(database_url=postgres_url, encryption_keys=KEY, tenants_file=tenants_file)
    )
    live = runtime.go_live(interval_s=0.05, role="worker")
    assert live is not None
    live.watch()
    try:
        _write(tenants_file, {acme: tenant_body(), globex: {**tenant_body(), "schedul": "x"}})
        assert wait_until(lambda: globex in live.problems, timeout=10)
        assert globex in dict(config_checks(runtime)[0].problems)
    finally:
        live.stop_watching()
        runtime.close()


def test_a_corrected_ifs_secret_reaches_ifs_at_the_next_check(
    runtime: Runtime, tenants_file: Path, clock: Clock, ifs_sim: Any
) -> None:
    from connector.errors import RemoteError

    acme = unique_tenant("acme")
    body = tenant_body(
        ifs_url=ifs_sim.url, namespace=ifs_sim.namespace, client_id=ifs_sim.client_id
    )
    _write(tenants_file, {acme: body})
    runtime.vault.set(acme, "ifs", "client_secret", "wrong-secret")
    runtime.vault.set(acme, "pipedrive", "api_token", "t0ken")
    with pytest.raises(RemoteError, match="401"):
        runtime.tenant_sync(acme).ifs.tokens.token()

    runtime.vault.set(acme, "ifs", "client_secret", ifs_sim.client_secret)
    assert _check(runtime, clock)  # no restart: the next check rebuilds the tenant's clients

    assert runtime.tenant_sync(acme).ifs.tokens.token()
