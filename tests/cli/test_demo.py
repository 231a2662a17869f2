"""`ml-connector demo`: the whole story on the embedded default, as `make demo` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ml-connector demo` as `make demo` runs it: no CONNECTOR_* settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    result = subprocess.run(
        [str(BIN / "ml-connector"), "demo", "--dir", str(folder), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_demo_tells_the_whole_story_and_ends_with_zero_failures(tmp_path: Path) -> None:
    result = _demo(tmp_path / "demo", "--json", "--customers", "6", "--orders", "15")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["customers"] == 6 and summary["orders"] == 15
    assert summary["organizations_created"] == 6
    assert summary["deals_created"] == 15  # the broken order too, after its replay
    assert summary["stage_changes_pushed"] == 3 and summary["ifs_orders_updated"] == 3
    assert summary["replayed"] == 1 and summary["failed"] == 0
    assert summary["requests"]["ifs"] > 0 and summary["requests"]["pipedrive"] > 0
    assert (tmp_path / "demo" / "connector.db").exists()


def test_demo_narrates_for_people(tmp_path: Path) -> None:
    result = _demo(tmp_path / "demo", "--customers", "3", "--orders", "6")
    out = result.stdout
    for step in ("1. Sync IFS → Pipedrive", "2. A sales user moves deals", "3. The failed order"):
        assert step in out
    assert "stage → Released" in out and "marked won" in out and "COST CTR" in out
    assert "0 failed" in out
