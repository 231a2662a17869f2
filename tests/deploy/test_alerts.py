"""The shipped Prometheus alert rules are valid (promtool) and use metrics the code exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from connector import metrics

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
# Added by the living-deployment work (overdue syncs); referenced before it lands.
PENDING_METRICS = {"mlc_last_successful_sync_timestamp_seconds"}


def _rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout, checked.stdout


def test_rules_cover_failures_overdue_syncs_429s_and_webhook_refusals() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert 'mlc_records_synced_total{outcome="failed"}' in expressions["MlConnectorRecordsFailing"]
    assert "mlc_last_successful_sync_timestamp_seconds" in expressions["MlConnectorSyncOverdue"]
    assert "mlc_remote_429_total" in expressions["MlConnectorRemote429sGrowing"]
    assert "mlc_webhook_rejections_total" in expressions["MlConnectorWebhookRefusals"]


def test_every_metric_in_the_rules_is_exported() -> None:
    text = Path(metrics.__file__).read_text()
    exported = set(re.findall(r'"(mlc_[a-z0-9_]+)"', text))
    used = {name for rule in _rules() for name in re.findall(r"\bmlc_[a-z0-9_]+", rule["expr"])}
    assert used - exported <= PENDING_METRICS, sorted(used - exported - PENDING_METRICS)
