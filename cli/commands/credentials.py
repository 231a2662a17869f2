"""`ml-connector credentials set|list|delete`: tenant secrets in the encrypted vault."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.storage.vault import KNOWN_NAMES, SYSTEMS

_SYSTEM = click.Choice(SYSTEMS)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; SQLite hands back naive values, which the connector writes in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _read_secret(system: str, name: str) -> str:
    if sys.stdin.isatty():
        value: str = click.prompt(
            f"{system} {name}", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    # `printf %s "$TOKEN" | …` and `… < file` both work; a final newline is not part of it.
    return sys.stdin.read().rstrip("\r\n")


@click.group(short_help="Store, list and delete tenant secrets (encrypted).")
def credentials() -> None:
    """Store, list and delete tenant secrets (encrypted with CONNECTOR_ENCRYPTION_KEYS).

    Values are never taken from the command line (it would end up in shell history and
    process listings) and never printed.
    """


@credentials.command("set")
@click.argument("tenant")
@click.argument("system", type=_SYSTEM, metavar="SYSTEM")
@click.argument("name")
@pass_context
def credentials_set(obj: CliContext, tenant: str, system: str, name: str) -> None:
    """Store secret NAME of SYSTEM (ifs, pipedrive, webhook) for TENANT, replacing any old value.

    The value is read from standard input when it is not a terminal, otherwise from a
    hidden prompt asked twice.

    \b
    Names the connector reads:
      ifs        client_secret
      pipedrive  api_token, or oauth_client_secret and oauth_refresh_token
      webhook    basic_user, basic_password, hmac_secret
    """
    with reported_errors():
        tenant_ids = list(obj.runtime.tenants)
    if tenant not in tenant_ids:
        raise click.ClickException(
            f"unknown tenant {tenant!r} (tenants file {obj.tenants_path} defines: "
            f"{', '.join(sorted(tenant_ids)) or 'none'})"
        )
    if name not in KNOWN_NAMES[system]:
        click.echo(
            f"warning: the connector does not read {system} credential {name!r} "
            f"(it reads: {', '.join(KNOWN_NAMES[system])}); storing it anyway",
            err=True,
        )
    migrated_database(obj)
    with reported_errors():
        obj.runtime.vault.check_keys()
    value = _read_secret(system, name)
    if not value:
        raise click.ClickException("empty value: nothing stored")
    with reported_errors():
        obj.runtime.vault.set(tenant, system, name, value)
    click.echo(f"stored {system} credential {name!r} for tenant {tenant!r}")


@credentials.command("list")
@click.option("--tenant", default=None, help="Only this tenant's credentials.")
@pass_context
def credentials_list(obj: CliContext, tenant: str | None) -> None:
    """List stored credentials: tenant, system, name and when last set (never values)."""
    migrated_database(obj)
    with reported_errors():
        rows = obj.runtime.vault.names(tenant)
    if not rows:
        click.echo("no credentials stored" + (f" for tenant {tenant!r}" if tenant else ""))
        return
    width = max(len("TENANT"), *(len(row[0]) for row in rows))
    click.echo(f"{'TENANT':<{width}}  {'SYSTEM':<9}  {'NAME':<20}  UPDATED (UTC)")
    for row_tenant, system, name, updated_at in rows:
        stamp = as_utc(updated_at).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{row_tenant:<{width}}  {system:<9}  {name:<20}  {stamp}")


@credentials.command("delete")
@click.argument("tenant")
@click.argument("system", type=_SYSTEM, metavar="SYSTEM")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def credentials_delete(obj: CliContext, tenant: str, system: str, name: str, yes: bool) -> None:
    """Delete secret NAME of SYSTEM (ifs, pipedrive, webhook) for TENANT."""
    migrated_database(obj)
    if not yes:
        click.confirm(
            f"delete {system} credential {name!r} of tenant {tenant!r}?", abort=True, err=True
        )
    with reported_errors():
        deleted = obj.runtime.vault.delete(tenant, system, name)
    if not deleted:
        raise click.ClickException(
            f"tenant {tenant!r} has no {system} credential {name!r}; nothing deleted"
        )
    click.echo(f"deleted {system} credential {name!r} of tenant {tenant!r}")
