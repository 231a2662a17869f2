"""`ml-connector db upgrade|current`: schema migrations; the database access commands share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from cli.context import CliContext, pass_context
from connector.errors import ConnectorError
from connector.storage.database import Database
from connector.storage.migrate import (
    current_revision,
    head_revision,
    require_migrated,
    safe_url,
    upgrade_from_to,
)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the connector's deliberate errors into a one-line `Error: …` and exit status 1."""
    try:
        yield
    except ConnectorError as error:
        raise click.ClickException(str(error)) from error


def migrated_database(obj: CliContext) -> Database:
    """The runtime's database, refused with a clear message unless it is fully migrated."""
    with reported_errors():
        database = obj.runtime.database
        require_migrated(database)
        return database


@click.group(short_help="Create or upgrade the connector database.")
def db() -> None:
    """Create or upgrade the connector database (CONNECTOR_DATABASE_URL)."""


@db.command("upgrade")
@pass_context
def db_upgrade(obj: CliContext) -> None:
    """Apply all pending migrations; safe to run again (does nothing when up to date)."""
    url = obj.settings.database_url
    with reported_errors():
        before, after = upgrade_from_to(url)
    if before == after:
        click.echo(f"database {safe_url(url)} is already at revision {after} (head)")
    else:
        click.echo(f"database {safe_url(url)} upgraded: {before or 'empty'} -> {after} (head)")


@db.command("current")
@click.option("--check", is_flag=True, help="Exit with status 1 when the database is not at head.")
@pass_context
def db_current(obj: CliContext, check: bool) -> None:
    """Show the schema revision of the database and whether it is the newest."""
    url = obj.settings.database_url
    with reported_errors():
        current = current_revision(url)
    head = head_revision()
    if current == head:
        click.echo(f"{current} (head) {safe_url(url)}")
        return
    click.echo(
        f"{current or 'none'} (head is {head}) {safe_url(url)}: "
        "database not migrated: run `ml-connector db upgrade`"
    )
    if check:
        raise SystemExit(1)
