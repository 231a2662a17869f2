"""The Runtime owns the process's per-tenant syncs and tenants, replaced by `serve_tenants`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.errors import UnknownTenantError
from connector.runtime import Runtime
from connector.settings import Settings
from connector.tenants import parse_tenants
from tests.connector.webhooks.support import KEY, tenant_body, unique_tenant


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    return tmp_path / "tenants.yaml"


def _write(path: Path, tenants: dict[str, dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"tenants": tenants}))


@pytest.fixture
def runtime(postgres_url: str, tenants_file: Path) -> Any:
    settings = Settings(database_url=postgres_url, encryption_keys=KEY, tenants_file=tenants_file)
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


def _tenant(runtime: Runtime, tenants_file: Path, name: str = "Acme") -> str:
    tenant = unique_tenant("rt")
    _write(tenants_file, {tenant: {"name": name, **tenant_body()}})
    runtime.vault.set(tenant, "ifs", "client_secret", "s3cret")
    runtime.vault.set(tenant, "pipedrive", "api_token", "t0ken")
    return tenant


def test_a_tenant_sync_is_built_once_and_shared_by_threads(
    runtime: Runtime, tenants_file: Path
) -> None:
    tenant = _tenant(runtime, tenants_file)
    seen: list[object] = []
    threads = [
        threading.Thread(target=lambda: seen.append(runtime.tenant_sync(tenant))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(sync) for sync in seen}) == 1
    assert runtime.tenant_sync(tenant) is seen[0]


def test_serving_new_tenants_drops_the_changed_tenants_sync_only(
    runtime: Runtime, tenants_file: Path
) -> None:
    tenant = _tenant(runtime, tenants_file, name="Acme")
    other = unique_tenant("rt")
    _write(tenants_file, {tenant: {"name": "Acme", **tenant_body()}, other: tenant_body()})
    runtime.vault.set(other, "ifs", "client_secret", "s3cret")
    runtime.vault.set(other, "pipedrive", "api_token", "t0ken")
    before, kept = runtime.tenant_sync(tenant), runtime.tenant_sync(other)
    renamed = parse_tenants(
        {"tenants": {tenant: {"name": "Acme Renamed", **tenant_body()}, other: tenant_body()}}
    )

    runtime.serve_tenants(renamed, {tenant})

    after = runtime.tenant_sync(tenant)
    assert after is not before and after.tenant.name == "Acme Renamed"
    assert runtime.tenant_sync(other) is kept


def test_a_tenant_no_longer_served_is_unknown(runtime: Runtime, tenants_file: Path) -> None:
    tenant = _tenant(runtime, tenants_file)
    runtime.tenant_sync(tenant)

    runtime.serve_tenants({}, None)

    with pytest.raises(UnknownTenantError):
        runtime.tenant_sync(tenant)


def test_a_sync_built_while_its_configuration_was_replaced_is_not_kept(
    runtime: Runtime, tenants_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.sync.engine import TenantSync

    tenant = _tenant(runtime, tenants_file, name="Acme")
    renamed = parse_tenants({"tenants": {tenant: {"name": "Acme Renamed", **tenant_body()}}})
    build = TenantSync.__init__

    def built_while_the_file_changed(self: TenantSync, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        monkeypatch.setattr(TenantSync, "__init__", build)
        # What a LiveConfig check in another thread does between the build's read and its end.
        runtime.serve_tenants(renamed, {tenant})

    monkeypatch.setattr(TenantSync, "__init__", built_while_the_file_changed)

    assert runtime.tenant_sync(tenant).tenant.name == "Acme"  # the task that asked uses it
    assert runtime.tenant_sync(tenant).tenant.name == "Acme Renamed"  # nobody else does


def test_tenants_given_without_a_file_are_served(postgres_url: str) -> None:
    tenant = unique_tenant("given")
    settings = Settings(database_url=postgres_url, tenants_file=Path("/nonexistent/tenants.yaml"))
    runtime = Runtime(settings, tenants=parse_tenants({"tenants": {tenant: tenant_body()}}))
    assert runtime.tenant(tenant).id == tenant
    runtime.close()
