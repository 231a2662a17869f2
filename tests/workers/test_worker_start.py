"""Roles that run beside other processes (celery worker, beat, the gunicorn receiver) refuse
the embedded defaults and an un-migrated database, and say which setting to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    return env | settings


def _run(*command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


WORKER = ("celery", "-A", "workers.app:celery_app", "worker", "-l", "WARNING")


def _role(name: str, folder: Path) -> tuple[str, ...]:
    if name == "worker":
        return WORKER
    return ("celery", "-A", "workers.app:celery_app", "beat", f"--schedule={folder / 'beat'}")


def test_a_worker_on_an_unmigrated_database_exits_with_the_fix(tmp_path: Path, redis_url) -> None:
    env = _environment(
        CONNECTOR_DATABASE_URL=f"sqlite:///{tmp_path / 'never-migrated.db'}",
        CONNECTOR_BROKER_URL=redis_url,
    )
    result = _run(*WORKER, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "database not migrated: run `ml-connector db upgrade`" in result.stdout + result.stderr


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_a_role_without_a_broker_refuses_the_memory_queue(tmp_path: Path, role) -> None:
    env = _environment(CONNECTOR_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    result = _run(*_role(role, tmp_path), env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "not started: no broker: CONNECTOR_BROKER_URL" in output, output
    assert "memory://" in output and "CONNECTOR_DATABASE_URL" not in output


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_a_role_without_a_database_url_refuses_the_implicit_sqlite_file(
    tmp_path: Path, redis_url, role
) -> None:
    env = _environment(CONNECTOR_BROKER_URL=redis_url)
    result = _run(*_role(role, tmp_path), env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "no database: CONNECTOR_DATABASE_URL is unset" in output, output
    assert not (tmp_path / "var" / "connector.db").exists()


def test_a_gunicorn_receiver_without_broker_or_database_does_not_boot(tmp_path: Path) -> None:
    result = _run(
        "gunicorn",
        "--no-control-socket",
        "-b",
        "127.0.0.1:0",
        "webhook_receiver.wsgi:app",
        env=_environment(),
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "receiver not started: no broker: CONNECTOR_BROKER_URL" in output, output
    assert "no database: CONNECTOR_DATABASE_URL is unset" in output
