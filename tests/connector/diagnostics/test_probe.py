"""Live checks against the simulators over HTTP: reads only, and every failure with its fix."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from connector.coordination import Coordination
from connector.diagnostics.probe import check_tenant
from connector.diagnostics.urls import public_url
from tests.connector.diagnostics.conftest import MakeRuntime

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _body(ifs_sim: Any, pipedrive_sim: Any, **ifs: Any) -> dict[str, Any]:
    return {
        "ifs": {
            "base_url": ifs_sim.url,
            "namespace": ifs_sim.namespace,
            "client_id": ifs_sim.client_id,
            **ifs,
        },
        "pipedrive": {"api_domain": pipedrive_sim.url},
    }


def test_public_url_drops_user_info_query_and_fragment() -> None:
    assert public_url("https://u:p@host:8443/a/b?token=x#f") == "https://host:8443/a/b"
    assert public_url("vault: acme/ifs/client_secret") == "vault: acme/ifs/client_secret"


def test_good_set_up_passes_every_step_and_the_reads_show_in_our_headroom(
    runtime_for: MakeRuntime, ifs_sim: Any, pipedrive_sim: Any, shared_coordination: Coordination
) -> None:
    runtime, tenant = runtime_for(_body(ifs_sim, pipedrive_sim))
    runtime.coordination = shared_coordination  # type: ignore[misc]
    runtime.vault.set(tenant, "ifs", "client_secret", ifs_sim.client_secret)
    runtime.vault.set(tenant, "pipedrive", "api_token", pipedrive_sim.api_token)
    ifs_sim.state.seed(customers=1, orders=1)

    report = check_tenant(runtime, tenant, tenants_file="tenants.yaml")

    assert report.ok, report.as_dict()
    ifs, pipedrive = report.systems
    assert [(step.name, step.ok) for step in ifs.steps] == [
        ("credential", True),
        ("token", True),
        ("customers", True),
        ("orders", True),
    ]
    assert ifs.steps[2].detail is not None and ifs.steps[2].detail.startswith("read ")
    assert pipedrive.steps[-1].detail == "readable, but no deals or organizations yet"
    assert ifs.headroom["ours"]["limits"][0]["used"] >= 2
    assert "note" not in ifs.headroom["ours"]
    assert pipedrive.headroom["pipedrive"]["x-ratelimit-limit"] is not None
    assert ifs_sim.state.stats()["writes"] == 0


def test_unreachable_ifs_and_a_missing_pipedrive_token_each_name_their_fix(
    runtime_for: MakeRuntime, ifs_sim: Any, pipedrive_sim: Any
) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    runtime, tenant = runtime_for(_body(ifs_sim, pipedrive_sim, base_url=closed))
    runtime.vault.set(tenant, "ifs", "client_secret", ifs_sim.client_secret)

    report = check_tenant(runtime, tenant, tenants_file="tenants.yaml")

    assert not report.ok
    ifs, pipedrive = (system.as_dict() for system in report.systems)
    assert ifs["steps"][-1]["name"] == "token" and not ifs["steps"][-1]["ok"]
    assert ifs["tried"].startswith(f"token: {closed}/auth/realms/")
    assert ifs["fix"] == f"is ifs.base_url ({closed}) right and reachable from here?"
    assert [step["name"] for step in pipedrive["steps"]] == ["credential"]
    assert pipedrive["fix"] == f"`ml-connector credentials set {tenant} pipedrive api_token`"
    # The in-process limiter of this process answers for itself, and says so.
    assert "in-process limiter" in ifs["headroom"]["ours"]["note"]
    assert pipedrive_sim.state.stats()["requests"] == {}
