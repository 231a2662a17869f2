"""Applying and checking the Alembic migrations of the connector database (no alembic.ini)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import ConfigError
from connector.storage.database import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x6D6C_6364_6275  # "mlcdbu": the advisory lock id of migrations
NOT_MIGRATED = "database not migrated: run `ml-connector db upgrade`"


def safe_url(database_url: str) -> str:
    """The URL with any password masked, fit for messages and logs."""
    return make_url(database_url).render_as_string(hide_password=True)


def alembic_config(database_url: str, connection: Connection | None = None) -> Config:
    """An Alembic Config for `database_url`, built in code; `connection` is reused if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of the code knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the migrations directory holds at least one revision"
    return head


def _known_revisions() -> set[str]:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {script.revision for script in scripts.walk_revisions()}


def upgrade(database_url: str, revision: str = "head") -> str:
    """Apply migrations up to `revision` and return the revision the database is then at.

    Raises ConfigError when the database cannot be reached or a migration fails.
    """
    return upgrade_from_to(database_url, revision)[1]


def upgrade_from_to(database_url: str, revision: str = "head") -> tuple[str | None, str]:
    """Like `upgrade`, and also the revision found first (None: empty), read under the same
    lock, so that of replicas upgrading at once exactly one reports that it upgraded."""
    database = Database(database_url)  # creates the directory of a SQLite file
    try:
        with database.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas that all run `db upgrade` at start-up take turns instead of racing
                # to create the same tables; the lock ends with the transaction.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            before = MigrationContext.configure(connection).get_current_revision()
            command.upgrade(alembic_config(database_url, connection), revision)
        return before, _revision_of(database) or "base"
    except SQLAlchemyError as error:
        raise ConfigError(
            f"cannot migrate database {safe_url(database_url)}: {error.__class__.__name__}: "
            f"{_first_line(error)}"
        ) from error
    finally:
        database.dispose()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _revision_of(database: Database) -> str | None:
    try:
        with database.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as error:
        raise ConfigError(
            f"cannot read the schema revision of database {safe_url(database.url)}: "
            f"{_first_line(error)}"
        ) from error


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    database = Database(database_url)
    try:
        return _revision_of(database)
    finally:
        database.dispose()


def require_migrated(database: Database) -> None:
    """Raise ConfigError unless `database` is at the head revision (operator forgot to migrate)."""
    current = _revision_of(database)
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in _known_revisions():
        raise ConfigError(
            f"database {safe_url(database.url)} is at schema revision {current!r}, which this "
            f"version of ml-connector does not know (it expects {head!r}); was it migrated by "
            "a newer version?"
        )
    state = "has no schema revision" if current is None else f"is at revision {current!r}"
    raise ConfigError(
        f"{NOT_MIGRATED} (database {safe_url(database.url)} {state}; this version needs {head!r})"
    )
