"""The Runtime owns the process's per-tenant syncs and tenants, and forgets them on `invalidate`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.errors import UnknownTenantError
from connector.runtime import Runtime
from connector.settings import Settings
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


def test_invalidate_drops_the_tenant_sync_and_rereads_the_tenants_file(
    runtime: Runtime, tenants_file: Path
) -> None:
    tenant = _tenant(runtime, tenants_file, name="Acme")
    before = runtime.tenant_sync(tenant)
    _write(tenants_file, {tenant: {"name": "Acme Renamed", **tenant_body()}})
    assert runtime.tenant(tenant).name == "Acme"  # cached until invalidated

    runtime.invalidate(tenant)

    after = runtime.tenant_sync(tenant)
    assert after is not before
    assert runtime.tenant(tenant).name == "Acme Renamed" and after.tenant.name == "Acme Renamed"


def test_invalidate_of_every_tenant_forgets_a_tenant_removed_from_the_file(
    runtime: Runtime, tenants_file: Path
) -> None:
    tenant = _tenant(runtime, tenants_file)
    runtime.tenant_sync(tenant)
    _write(tenants_file, {})

    runtime.invalidate()

    with pytest.raises(UnknownTenantError):
        runtime.tenant_sync(tenant)


def test_tenants_given_without_a_file_survive_invalidate(postgres_url: str) -> None:
    from connector.tenants import parse_tenants

    tenant = unique_tenant("given")
    settings = Settings(database_url=postgres_url, tenants_file=Path("/nonexistent/tenants.yaml"))
    runtime = Runtime(settings, tenants=parse_tenants({"tenants": {tenant: tenant_body()}}))
    runtime.invalidate()
    assert runtime.tenant(tenant).id == tenant
    runtime.close()
