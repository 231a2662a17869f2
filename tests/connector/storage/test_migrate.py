"""The Alembic migrations: same schema as the models on Postgres and SQLite, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from connector.errors import ConfigError
from connector.storage.database import Database
from connector.storage.migrate import (
    NOT_MIGRATED,
    alembic_config,
    current_revision,
    head_revision,
    require_migrated,
    upgrade,
)
from connector.storage.models import Base
from connector.storage.runs import recent_runs, run_progress
from tests.connector.storage.databases import fresh_postgres


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'connector.db'}"
    else:
        with fresh_postgres(request.getfixturevalue("postgres_url")) as url:
            yield url


def _schema_differences(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_creates_exactly_the_schema_of_the_models(empty_url):
    assert current_revision(empty_url) is None
    assert current_revision(empty_url) != head_revision()

    assert upgrade(empty_url) == head_revision()

    assert current_revision(empty_url) == head_revision()
    assert current_revision(empty_url) == head_revision()
    assert _schema_differences(empty_url) == []
    tables = set(sa.inspect(sa.create_engine(empty_url)).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_again_changes_nothing(empty_url):
    upgrade(empty_url)
    assert upgrade(empty_url) == head_revision()
    assert _schema_differences(empty_url) == []


def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(empty_url):
    upgrade(empty_url)
    command.downgrade(alembic_config(empty_url), "base")
    assert set(sa.inspect(sa.create_engine(empty_url)).get_table_names()) <= {"alembic_version"}
    assert current_revision(empty_url) is None
    upgrade(empty_url)
    assert _schema_differences(empty_url) == []


def test_require_migrated_tells_the_operator_to_run_db_upgrade(empty_url):
    database = Database(empty_url)
    try:
        with pytest.raises(ConfigError) as caught:
            require_migrated(database)
        assert NOT_MIGRATED in str(caught.value)
        assert "database not migrated: run `ml-connector db upgrade`" in str(caught.value)
        upgrade(empty_url)
        require_migrated(database)
    finally:
        database.dispose()


def test_tables_made_without_alembic_count_as_not_migrated(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    database = Database(url)
    with pytest.raises(ConfigError, match="database not migrated"):
        require_migrated(database)
    database.dispose()


def test_a_revision_from_newer_code_is_reported_as_unknown(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    database = Database(url)
    with pytest.raises(ConfigError, match="'9999', which this version of ml-connector does not"):
        require_migrated(database)
    database.dispose()
    assert current_revision(url) != head_revision()


def test_unreachable_database_is_a_config_error_without_the_password():
    url = "postgresql+psycopg2://postgres:s3cr3t-pw@127.0.0.1:1/nothing"
    with pytest.raises(ConfigError) as caught:
        upgrade(url)
    assert "cannot migrate database postgresql+psycopg2://postgres:***@127.0.0.1:1/nothing" in str(
        caught.value
    )
    assert "s3cr3t-pw" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read the schema revision"):
        current_revision(url)


def test_replicas_upgrading_at_once_on_postgres_take_turns(postgres_url):
    # Separate processes, as replicas are: Alembic's context is process-global, not per thread.
    command = Path(sys.executable).with_name("ml-connector")
    with fresh_postgres(postgres_url) as url:
        env = {**os.environ, "CONNECTOR_DATABASE_URL": url}
        replicas = [
            subprocess.Popen(
                [str(command), "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [replica.communicate(timeout=120)[0] for replica in replicas]
        assert [replica.returncode for replica in replicas] == [0, 0, 0], outputs
        assert sum("upgraded: empty -> " in output for output in outputs) == 1, outputs
        assert _schema_differences(url) == []


def test_0002_lifecycle_adds_tombstones_to_existing_id_map_rows_and_downgrades_cleanly(empty_url):
    upgrade(empty_url, "0001")
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO id_map (tenant, entity, ifs_key, pipedrive_id, updated_at) "
                    "VALUES ('t', 'order', 'O1', 7, CURRENT_TIMESTAMP)"
                )
            )
        assert upgrade(empty_url, "0002") == "0002"
        with engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT pipedrive_id, tombstoned_at, tombstone_reason FROM id_map")
            ).one()
        assert tuple(row) == (7, None, None)
        # Later migrations stack on this one: the models are the schema at head.
        assert upgrade(empty_url) == head_revision()
        assert _schema_differences(empty_url) == []

        command.downgrade(alembic_config(empty_url), "0001")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("id_map")}
        assert "tombstoned_at" not in columns and "tombstone_reason" not in columns
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM id_map")).scalar() == 1
    finally:
        engine.dispose()


def test_0003_keeps_existing_audit_rows_and_records_who_replayed(empty_url):
    from connector.storage.audit import FAILED, Attempt, AuditLog

    assert upgrade(empty_url, "0002") == "0002"
    engine = sa.create_engine(empty_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO audit_log (tenant, direction, entity, record_key, operation,"
                " status, attempt, replay_task, replay_args, started_at) VALUES ('acme',"
                " 'ifs_to_pipedrive', 'order', 'C1', 'create', 'failed', 1, 'x', '{}',"
                " CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    assert upgrade(empty_url, "0003") == "0003"
    # Later migrations stack on this one: the models are the schema at head.
    assert upgrade(empty_url) == head_revision()
    assert _schema_differences(empty_url) == []
    database = Database(empty_url)
    try:
        log = AuditLog(database)
        (old,) = log.latest_failed("acme")
        assert old.record_key == "C1" and old.replayed_by is None
        assert log.mark_replayed(old.id, "alice") is True
        replayed = log.get(old.id)
        assert replayed is not None and replayed.replayed_by == "alice"
        assert replayed.replayed_at is not None
        new_id = log.write(Attempt("acme", "ifs_to_pipedrive", "order", "C2", status=FAILED))
        assert log.get(new_id).replayed_by is None  # type: ignore[union-attr]
    finally:
        database.dispose()
    command.downgrade(alembic_config(empty_url), "0002")
    columns = {c["name"] for c in sa.inspect(sa.create_engine(empty_url)).get_columns("audit_log")}
    assert "replayed_by" not in columns


def test_0004_counts_existing_audit_rows_as_one_occurrence_and_downgrades_cleanly(empty_url):
    assert upgrade(empty_url, "0003") == "0003"
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO audit_log (tenant, direction, entity, record_key, operation,"
                    " status, attempt, started_at) VALUES ('acme', 'ifs_to_pipedrive', 'order',"
                    " 'C1', 'create', 'failed', 1, CURRENT_TIMESTAMP)"
                )
            )
        assert upgrade(empty_url, "0004") == "0004"
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT occurrences FROM audit_log")).scalar() == 1
        assert upgrade(empty_url) == head_revision()
        assert _schema_differences(empty_url) == []
        command.downgrade(alembic_config(empty_url), "0003")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("audit_log")}
        assert "occurrences" not in columns
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM audit_log")).scalar() == 1
    finally:
        engine.dispose()


def test_0006_adds_the_webhook_refusals_table_and_downgrades_cleanly(empty_url):
    assert upgrade(empty_url, "0005") == "0005"
    engine = sa.create_engine(empty_url)
    try:
        assert "webhook_refusals" not in sa.inspect(engine).get_table_names()
        assert upgrade(empty_url, "0006") == "0006"
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO webhook_refusals (refused_at, tenant, reason, http_status)"
                    " VALUES (CURRENT_TIMESTAMP, NULL, 'unknown_tenant', 401)"
                )
            )
            assert connection.execute(sa.text("SELECT count FROM webhook_refusals")).scalar() == 1
        command.downgrade(alembic_config(empty_url), "0005")
        assert "webhook_refusals" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_0007_enters_existing_runs_in_run_records_and_downgrades_cleanly(empty_url):
    upgrade(empty_url, "0006")
    engine = sa.create_engine(empty_url)
    insert = sa.text(
        "INSERT INTO audit_log (tenant, direction, entity, record_key, operation, status,"
        " attempt, occurrences, response_summary, correlation_id, started_at, finished_at)"
        " VALUES ('t', 'ifs_to_pipedrive', 'order', :key, :operation, :status, 1, 1,"
        " :summary, :run, :at, :at)"
    )

    def row(key: str, status: str, run: str | None = "r1", summary: str | None = None) -> dict:
        operation = "plan" if key == "*" else "update"
        at = "2026-12-01 10:00:00"
        return dict(key=key, operation=operation, status=status, summary=summary, run=run, at=at)

    try:
        with engine.begin() as connection:
            for values in (
                row("*", "succeeded", summary='{"read": 3, "queued": 3}'),
                row("O1", "superseded"),  # a retry of O1 took its place in the run
                row("O1", "succeeded"),
                row("O2", "failed"),
                row("O3", "retrying"),
                row("O4", "succeeded", run=None),  # a replay outside any run
            ):
                connection.execute(insert, values)
        assert upgrade(empty_url, "0007") == "0007"

        database = Database(empty_url)
        try:
            progress = run_progress(database, "r1")
            assert recent_runs(database, "t") == ["r1"]
        finally:
            database.dispose()
        assert progress is not None
        assert (progress.planned, progress.done, progress.failed, progress.retrying) == (3, 1, 1, 1)
        assert upgrade(empty_url) == head_revision()
        assert _schema_differences(empty_url) == []

        command.downgrade(alembic_config(empty_url), "0006")
        assert "run_records" not in sa.inspect(engine).get_table_names()
        indexes = {index["name"] for index in sa.inspect(engine).get_indexes("audit_log")}
        assert "ix_audit_failed" not in indexes
    finally:
        engine.dispose()


def test_0008_adds_the_work_items_table_with_its_indexes_and_downgrades_cleanly(empty_url):
    assert upgrade(empty_url, "0007") == "0007"
    engine = sa.create_engine(empty_url)
    try:
        assert "work_items" not in sa.inspect(engine).get_table_names()
        assert upgrade(empty_url, "0008") == "0008"
        if engine.dialect.name == "sqlite":  # SQLAlchemy's inspector leaves partial indexes out
            with engine.connect() as connection:
                names = set(
                    connection.execute(
                        sa.text("SELECT name FROM sqlite_master WHERE tbl_name = 'work_items'")
                    ).scalars()
                )
        else:
            names = {index["name"] for index in sa.inspect(engine).get_indexes("work_items")}
        assert {"ix_work_items_waiting", "ix_work_items_released"} <= names
        command.downgrade(alembic_config(empty_url), "0007")
        assert "work_items" not in sa.inspect(engine).get_table_names()
        # Later migrations stack on this one: the models are the schema at head.
        assert upgrade(empty_url) == head_revision()
        assert _schema_differences(empty_url) == []
    finally:
        engine.dispose()


def test_0009_adds_the_index_of_tried_work_items_and_downgrades_cleanly(empty_url):
    assert upgrade(empty_url, "0009") == "0009"
    engine = sa.create_engine(empty_url)
    try:
        assert "ix_work_items_tried" in _work_item_indexes(engine)
        assert _schema_differences(empty_url) == []
        command.downgrade(alembic_config(empty_url), "0008")
        assert "ix_work_items_tried" not in _work_item_indexes(engine)
        assert "ix_work_items_waiting" in _work_item_indexes(engine)
    finally:
        engine.dispose()


def _work_item_indexes(engine: sa.Engine) -> set[str]:
    if engine.dialect.name == "sqlite":  # SQLAlchemy's inspector leaves partial indexes out
        with engine.connect() as connection:
            return set(
                connection.execute(
                    sa.text("SELECT name FROM sqlite_master WHERE tbl_name = 'work_items'")
                ).scalars()
            )
    return {str(index["name"]) for index in sa.inspect(engine).get_indexes("work_items")}
