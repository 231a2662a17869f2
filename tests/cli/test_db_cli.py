"""`ml-connector db upgrade|current` against SQLite and a fresh Postgres database."""

from __future__ import annotations

from connector.storage.migrate import current_revision, head_revision
from tests.connector.storage.databases import fresh_postgres


def test_upgrade_then_current_on_sqlite(run):
    result = run("db", "current", "--check")
    assert result.exit_code == 1
    assert "database not migrated: run `ml-connector db upgrade`" in result.output

    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"upgraded: empty -> {head_revision()} (head)" in result.output

    again = run("db", "upgrade")
    assert again.exit_code == 0
    assert f"already at revision {head_revision()}" in again.output

    current = run("db", "current", "--check")
    assert current.exit_code == 0
    assert current.output.startswith(f"{head_revision()} (head)")


def test_upgrade_on_postgres_masks_the_password(run, postgres_url):
    with fresh_postgres(postgres_url) as url:
        run.env["CONNECTOR_DATABASE_URL"] = url.replace("postgres@", "postgres:pw-xyz@")
        result = run("db", "upgrade")
        assert result.exit_code == 0, result.output
        assert "pw-xyz" not in result.output and "postgres:***@" in result.output
        assert current_revision(url) == head_revision()


def test_unreachable_database_is_one_clean_error_line(run):
    run.env["CONNECTOR_DATABASE_URL"] = "postgresql+psycopg2://postgres@127.0.0.1:1/none"
    result = run("db", "upgrade")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot migrate database postgresql")
    assert "Traceback" not in result.output
