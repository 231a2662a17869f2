"""Shared set-up for CLI tests: a tenants file, a database URL and the process environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet

from cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "tenants.example.yaml"


class Cli:
    """Runs `ml-connector` in-process with a controlled CONNECTOR_* environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.tenants = tmp_path / "tenants.yaml"
        shutil.copy(EXAMPLE, self.tenants)
        self.env: dict[str, str | None] = {
            "CONNECTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'connector.db'}",
            "CONNECTOR_TENANTS_FILE": str(self.tenants),
            "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "CONNECTOR_REDIS_URL": None,
        }

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, env=self.env)


@pytest.fixture
def run(tmp_path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def migrated(run: Cli) -> Cli:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    return run
