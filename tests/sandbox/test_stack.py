"""The assembled stack: a tenant that reaches both simulators, workers that start and stop,
and a close that leaves nothing of the stack in Redis."""

from __future__ import annotations

import pytest
import redis
import yaml

from connector.polling import wait_until
from sandbox.stack import Stack

pytestmark = pytest.mark.integration


def test_tenant_reaches_both_simulators_with_stored_credentials(stack_factory) -> None:
    stack: Stack = stack_factory(tenant_overrides={"pipedrive": {"burst_limit": 40}})
    section = yaml.safe_load(stack.tenants_file.read_text())["tenants"][stack.tenant]
    assert section["ifs"]["base_url"] == stack.ifs_url
    assert section["pipedrive"]["api_domain"] == stack.pipedrive_url
    assert section["pipedrive"]["burst_limit"] == 40  # an override wins over the test limits

    # The CLI, run with the stack's environment, reaches both with the vault's credentials.
    result = stack.cli("check", stack.tenant, "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_workers_start_with_their_pool_and_close_forgets_queue_and_tenant_keys(
    stack_factory, redis_url
) -> None:
    stack: Stack = stack_factory()
    (worker,) = stack.start_workers(count=1, concurrency=1)
    stack.wait_for_pool(worker, 1, timeout=60)
    client = redis.Redis.from_url(redis_url)
    binding = f"_kombu.binding.{stack.queue}"  # written by the worker that consumes the queue
    assert wait_until(lambda: client.exists(binding), timeout=30)  # bound after the pool forks
    client.set(f"mlc:lock:{stack.tenant}:order:1", "1")  # as a record lock leaves it

    stack.close()

    assert worker.poll() is not None
    assert not client.exists(binding)
    assert not list(client.scan_iter(match=f"mlc:*{stack.tenant}*"))
