"""Bad database URLs, missing drivers and an unreachable broker are one clear line naming the
setting, from the installed `ml-connector` command, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from connector.errors import ConfigError
from connector.storage.database import Database
from connector.storage.migrate import head_revision

COMMAND = Path(sys.executable).with_name("ml-connector")
EXAMPLE = Path(__file__).resolve().parents[2] / "tenants.example.yaml"


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    tenants = tmp_path / "tenants.yaml"
    shutil.copy(EXAMPLE, tenants)
    environment = {
        **os.environ,
        "CONNECTOR_TENANTS_FILE": str(tenants),
        "CONNECTOR_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        **env,
    }
    return subprocess.run(
        [str(COMMAND), *args], env=environment, capture_output=True, text=True, timeout=120
    )


def test_a_heroku_style_postgres_url_is_taken_as_postgresql_psycopg2(tmp_path, postgres_url):
    heroku = make_url(postgres_url).set(drivername="postgres").render_as_string(False)
    assert heroku.startswith("postgres://")

    result = _run(tmp_path, "db", "current", "--check", CONNECTOR_DATABASE_URL=heroku)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{head_revision()} (head)"), result.stdout


def test_a_driver_whose_module_is_missing_is_named_with_the_setting(tmp_path):
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("psycopg (v3) is installed here")
    url = "postgresql+psycopg://mlc:s3cret@127.0.0.1:5432/connector"

    result = _run(tmp_path, "db", "current", CONNECTOR_DATABASE_URL=url)

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "CONNECTOR_DATABASE_URL" in result.stderr and "psycopg (v3)" in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "is not a database URL"),
        ("nosuchdb://host/name", "no database driver 'nosuchdb'"),
    ],
)
def test_unusable_database_urls_are_config_errors(url, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        Database(url)
    assert "CONNECTOR_DATABASE_URL" in str(caught.value)


def test_sync_with_an_unreachable_broker_names_the_broker_setting(tmp_path, postgres_url):
    result = _run(
        tmp_path,
        "sync",
        "acme",
        CONNECTOR_DATABASE_URL=postgres_url,
        CONNECTOR_BROKER_URL="redis://:pw@127.0.0.1:1/0",
    )

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "CONNECTOR_BROKER_URL" in result.stderr and "does not answer" in result.stderr
    assert ":pw@" not in result.stderr
