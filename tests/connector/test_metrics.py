"""The connector's Prometheus metrics move when their helpers run, also across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from connector import metrics
from connector.http import RemoteSession, RetryPolicy
from simulators.serving import RunningServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_record_sync_counts_by_outcome() -> None:
    tenant = _unique("t")
    metrics.record_sync(tenant, "customer", "created")
    metrics.record_sync(tenant, "customer", "created")
    metrics.record_sync(tenant, "order", "failed")
    name = "mlc_records_synced_total"
    assert _value(name, tenant=tenant, entity="customer", outcome="created") == 2
    assert _value(name, tenant=tenant, entity="order", outcome="failed") == 1
    assert _value(name, tenant=tenant, entity="customer", outcome="updated") == 0


def test_record_sync_refuses_unknown_outcomes() -> None:
    with pytest.raises(ValueError, match="unchanged"):
        metrics.record_sync("acme", "customer", "skipped")


def test_observe_remote_counts_statuses_and_429s() -> None:
    system = _unique("sys")
    metrics.observe_remote(system, "get", 200, 0.05)
    metrics.observe_remote(system, "GET", 429, 0.01)
    metrics.observe_remote(system, "POST", None, 1.0)
    name = "mlc_remote_requests_total"
    assert _value(name, system=system, method="GET", status="200") == 1
    assert _value(name, system=system, method="GET", status="429") == 1
    assert _value(name, system=system, method="POST", status="error") == 1
    assert _value("mlc_remote_429_total", system=system) == 1
    assert _value("mlc_remote_request_seconds_count", system=system, method="GET") == 2


def test_limiter_wait_and_stage_push_histograms() -> None:
    system, tenant = _unique("sys"), _unique("t")
    metrics.observe_limiter_wait(system, 0.25)
    metrics.observe_limiter_wait(system, 2.0)
    metrics.observe_stage_push(tenant, "applied", 3.5)
    assert _value("mlc_limiter_wait_seconds_count", system=system) == 2
    assert _value("mlc_limiter_wait_seconds_sum", system=system) == 2.25
    assert _value("mlc_limiter_wait_seconds_bucket", system=system, le="0.5") == 1
    assert _value("mlc_stage_push_seconds_count", tenant=tenant, outcome="applied") == 1
    assert _value("mlc_stage_push_seconds_sum", tenant=tenant, outcome="applied") == 3.5


def test_count_webhook_results_and_rejection_reasons() -> None:
    tenant, reason = _unique("t"), _unique("bad_auth")
    metrics.count_webhook(tenant, "accepted")
    metrics.count_webhook(tenant, "duplicate")
    metrics.count_webhook(tenant, "rejected", reason=reason)
    assert _value("mlc_webhooks_total", tenant=tenant, result="accepted") == 1
    assert _value("mlc_webhooks_total", tenant=tenant, result="duplicate") == 1
    assert _value("mlc_webhooks_total", tenant=tenant, result="rejected") == 1
    assert _value("mlc_webhook_rejections_total", reason=reason) == 1
    with pytest.raises(ValueError):
        metrics.count_webhook(tenant, "ignored")


def test_count_webhook_keeps_counting_with_its_label_children_resolved_once() -> None:
    tenant, reason = _unique("t"), _unique("bad_payload")
    for _ in range(3):
        metrics.count_webhook(tenant, "accepted")
        metrics.count_webhook(tenant, "rejected", reason=reason)
    metrics.count_webhook(tenant, "rejected")
    assert _value("mlc_webhooks_total", tenant=tenant, result="accepted") == 3
    assert _value("mlc_webhooks_total", tenant=tenant, result="rejected") == 4
    assert _value("mlc_webhook_rejections_total", reason=reason) == 3
    assert _value("mlc_webhook_rejections_total", reason="unspecified") >= 1
    with pytest.raises(ValueError):  # still refused once valid results are cached
        metrics.count_webhook(tenant, "ignored")


def test_render_latest_exposes_every_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    tenant = _unique("t")
    metrics.record_sync(tenant, "order", "updated")
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain")
    samples = _samples(body)
    key = (
        "mlc_records_synced_total",
        frozenset({"tenant": tenant, "entity": "order", "outcome": "updated"}.items()),
    )
    assert samples[key] == 1
    families = (
        "mlc_records_synced_total counter",
        "mlc_remote_requests_total counter",
        "mlc_remote_429_total counter",
        "mlc_limiter_wait_seconds histogram",
        "mlc_webhooks_total counter",
        "mlc_webhook_rejections_total counter",
        "mlc_stage_push_seconds histogram",
        "mlc_queue_depth gauge",
    )
    for family in families:
        assert f"# TYPE {family}\n".encode() in body


def test_remote_session_reports_each_attempt_once_installed() -> None:
    system = _unique("pd")
    answers = iter([429, 200])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status = next(answers)
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [b"{}"]

    assert metrics.install_remote_observer()
    with RunningServer(app) as server:
        session = RemoteSession(
            system, server.url, policy=RetryPolicy(base_s=0.001), sleep=lambda _: None
        )
        session.get("/api/v2/deals")
    assert _value("mlc_remote_requests_total", system=system, method="GET", status="429") == 1
    assert _value("mlc_remote_requests_total", system=system, method="GET", status="200") == 1
    assert _value("mlc_remote_429_total", system=system) == 1


_CHILD = """
import sys
from connector import metrics
metrics.record_sync("mp-tenant", "customer", "created")
metrics.observe_limiter_wait("mp-system", float(sys.argv[1]))
metrics.set_queue_depth("mp-queue", int(sys.argv[2]))
"""


def _run_child(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, cwd=REPO_ROOT, check=True, timeout=60
    )


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR",)}
    env.pop("CONNECTOR_METRICS_DIR", None)
    env.update(extra)
    return env


def test_multiprocess_mode_adds_up_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    _run_child(env, "0.5", "7")
    _run_child(env, "1.5", "9")
    assert list(tmp_path.glob("*.db")), "children wrote no sample files"

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = _samples(metrics.render_latest()[0])

    created = frozenset({"tenant": "mp-tenant", "entity": "customer", "outcome": "created"}.items())
    assert samples[("mlc_records_synced_total", created)] == 2
    system = frozenset({"system": "mp-system"}.items())
    assert samples[("mlc_limiter_wait_seconds_count", system)] == 2
    assert samples[("mlc_limiter_wait_seconds_sum", system)] == 2.0
    # A gauge is not summed: the most recent measurement wins.
    assert samples[("mlc_queue_depth", frozenset({"queue": "mp-queue"}.items()))] == 9


def test_connector_metrics_dir_turns_on_multiprocess_mode(tmp_path: Path) -> None:
    _run_child(_child_env(CONNECTOR_METRICS_DIR=str(tmp_path)), "0.1", "1")
    assert list(tmp_path.glob("counter_*.db"))


def test_worker_metrics_server_serves_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    tenant = _unique("t")
    metrics.record_sync(tenant, "customer", "unchanged")
    server, thread = metrics.start_worker_metrics_server(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        in_memory = requests.get(url, timeout=10)
        assert in_memory.status_code == 200
        assert f'tenant="{tenant}"' in in_memory.text

        # Multi-process mode is decided per scrape: the same server now reads the files.
        _run_child(_child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)), "0.2", "3")
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        from_files = requests.get(url, timeout=10)
        assert 'tenant="mp-tenant"' in from_files.text
        assert f'tenant="{tenant}"' not in from_files.text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
