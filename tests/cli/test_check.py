"""`ml-connector check`: both simulators over HTTP, good and broken set-ups, and no writes."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from sandbox.stack import Stack

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _check_json(stack: Stack) -> tuple[int, dict[str, Any]]:
    result = stack.cli("check", stack.tenant, "--json", timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def _systems(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {system["system"]: system for system in report["systems"]}


def _assert_nothing_written(stack: Stack) -> None:
    ifs = stack.ifs.stats()
    assert ifs["writes"] == 0, ifs
    # The only POST IFS may see is the token request.
    ifs_methods = {route.split()[0] for route in ifs["requests"] if route != "POST token"}
    assert ifs_methods <= {"GET"}, ifs["requests"]
    pipedrive = stack.pipedrive.stats()
    assert not any(pipedrive["writes"].values()), pipedrive["writes"]
    assert {route.split()[0] for route in pipedrive["requests"]} <= {"GET"}, pipedrive["requests"]


def test_good_tenant_is_ok_on_both_systems_and_nothing_is_written(stack_factory) -> None:
    stack = stack_factory()
    stack.ifs.seed(customers=2, orders=3, seed=4)

    code, report = _check_json(stack)

    assert code == 0 and report["ok"], report
    systems = _systems(report)
    ifs, pipedrive = systems["ifs"], systems["pipedrive"]
    assert [step["name"] for step in ifs["steps"]] == ["credential", "token", "customers", "orders"]
    assert all(step["ok"] for step in ifs["steps"] + pipedrive["steps"]), report
    assert ifs["steps"][2]["detail"].startswith("read ")
    assert [step["name"] for step in pipedrive["steps"]] == ["credential", "users/me", "deals"]
    # Pipedrive's own headers of the last answer, and our shared limiter's counters.
    reported = pipedrive["headroom"]["pipedrive"]
    assert int(reported["x-ratelimit-limit"]) == stack.pipedrive.settings.api_token_burst
    assert int(reported["x-ratelimit-remaining"]) < int(reported["x-ratelimit-limit"])
    ifs_budget = ifs["headroom"]["ours"]["limits"]
    assert ifs_budget[0]["capacity"] == stack.tenant_config["ifs"]["requests_per_minute"]
    assert ifs_budget[0]["used"] >= 2  # the customer and the order read just now
    daily = {limit["name"]: limit for limit in pipedrive["headroom"]["ours"]["limits"]}["daily"]
    assert daily["used"] >= 1 and daily["remaining"] == daily["capacity"] - daily["used"]
    _assert_nothing_written(stack)

    text = stack.cli("check", stack.tenant, timeout=120)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert any(line.startswith("IFS") and " OK " in line for line in lines), text.stdout
    assert any(line.startswith("Pipedrive") and " OK " in line for line in lines), text.stdout
    assert "all good" in text.stdout
    _assert_nothing_written(stack)


def test_wrong_ifs_secret_names_ifs_and_the_fix(stack_factory) -> None:
    stack = stack_factory()
    stack.runtime.vault.set(stack.tenant, "ifs", "client_secret", "not-the-secret")

    result = stack.cli("check", stack.tenant, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("IFS"), result.stdout
    assert "FAILED at token" in failed[0]
    assert "401" in failed[0]
    assert "openid-connect/token" in result.stdout  # what was tried
    assert "ifs.client_id" in result.stdout
    assert f"ml-connector credentials set {stack.tenant} ifs client_secret" in result.stdout
    assert "not-the-secret" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Pipedrive") and " OK " in line for line in lines), result.stdout
    _assert_nothing_written(stack)


def test_revoked_pipedrive_token_names_pipedrive_and_the_fix(stack_factory) -> None:
    stack = stack_factory()
    token = stack.pipedrive.settings.api_tokens[0]
    stack.pipedrive.revoke_api_token(token)

    code, report = _check_json(stack)

    assert code == 1 and not report["ok"]
    systems = _systems(report)
    assert systems["ifs"]["ok"], systems["ifs"]
    pipedrive = systems["pipedrive"]
    assert not pipedrive["ok"]
    assert "401" in pipedrive["error"]
    assert pipedrive["tried"] == f"users/me: {stack.pipedrive_url}/v1/users/me"
    assert f"ml-connector credentials set {stack.tenant} pipedrive api_token" in pipedrive["fix"]
    assert token not in json.dumps(report)
    _assert_nothing_written(stack)


def test_missing_pipedrive_token_says_how_to_store_it(stack_factory) -> None:
    stack = stack_factory()
    stack.runtime.vault.delete(stack.tenant, "pipedrive", "api_token")

    code, report = _check_json(stack)

    assert code == 1
    pipedrive = _systems(report)["pipedrive"]
    assert pipedrive["steps"][-1]["name"] == "credential" and not pipedrive["steps"][-1]["ok"]
    assert pipedrive["fix"] == f"`ml-connector credentials set {stack.tenant} pipedrive api_token`"
    assert stack.pipedrive.stats()["requests"] == {}  # nothing was sent without a token


def test_ifs_base_url_on_a_closed_port_names_ifs_and_reachability(stack_factory) -> None:
    stack = stack_factory()
    closed = f"http://127.0.0.1:{_closed_port()}"
    stack.write_tenants(ifs={"base_url": closed})

    result = stack.cli("check", stack.tenant, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("IFS"), result.stdout
    assert f"tried: token: {closed}/auth/realms/" in result.stdout
    assert f"is ifs.base_url ({closed}) right and reachable" in result.stdout
    assert stack.ifs.stats()["requests"] == {}
    _assert_nothing_written(stack)


def test_unknown_tenant_is_a_clean_error(stack_factory) -> None:
    stack = stack_factory()
    result = stack.cli("check", "no-such-tenant")
    assert result.returncode == 1
    assert "unknown tenant 'no-such-tenant'" in result.stderr
    assert "Traceback" not in result.stderr
