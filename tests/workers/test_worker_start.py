"""A worker refuses to start on a database that was never migrated, and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_a_worker_on_an_unmigrated_database_exits_with_the_fix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env["CONNECTOR_DATABASE_URL"] = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    result = subprocess.run(
        [str(BIN / "celery"), "-A", "workers.app:celery_app", "worker", "-l", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "database not migrated: run `ml-connector db upgrade`" in result.stdout + result.stderr
