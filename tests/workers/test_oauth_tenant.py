"""A tenant on Pipedrive OAuth2: workers sync with bearer tokens from the vault, refresh them
when the access token expires, and `check` reports Pipedrive OK."""

from __future__ import annotations

import json

import pytest

from connector.pipedrive.auth import exchange_authorization_code

pytestmark = pytest.mark.integration


def test_an_oauth_tenant_syncs_and_refreshes_its_access_token(stack_factory) -> None:
    stack = stack_factory()
    settings = stack.pipedrive.settings
    stack.write_tenants(
        pipedrive={
            "auth": "oauth2",
            "oauth_client_id": settings.client_id,
            "oauth_token_url": f"{stack.pipedrive_url}/oauth/token",
        }
    )
    stack.runtime.close()
    from connector.runtime import Runtime

    runtime = Runtime(stack.runtime.settings)
    tenant = runtime.tenant(stack.tenant)
    runtime.vault.set(stack.tenant, "pipedrive", "oauth_client_secret", settings.client_secret)
    redirect = "https://connector.example.com/oauth/callback"
    code = stack.pipedrive.issue_code("base deals:full contacts:full admin", None, redirect)
    exchange_authorization_code(tenant.pipedrive, code, redirect, runtime.vault, stack.tenant)
    # The first access token expires at once: the workers must refresh before using it.
    first_access = runtime.vault.get(stack.tenant, "pipedrive", "oauth_access_token")
    assert stack.pipedrive.expire_access_token(first_access)

    stack.ifs.seed(customers=2, orders=4, seed=21)
    stack.start_workers(count=2, concurrency=2)
    result = stack.cli("sync", stack.tenant, "--wait", "--json")
    assert result.returncode == 0, result.stderr + stack.worker_logs()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["created"] == 6 and summary["failed"] == 0, summary
    assert runtime.vault.get(stack.tenant, "pipedrive", "oauth_access_token") != first_access

    checked = stack.cli("check", stack.tenant)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Pipedrive  OK" in checked.stdout
    runtime.close()
