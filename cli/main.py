"""Entry point of `ml-connector`: global options and the registry of command groups."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.context import CliContext
from connector.errors import ConnectorError
from connector.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--tenants",
    "tenants_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CONNECTOR_TENANTS_FILE",
    default=None,
    help="Tenants YAML file (env CONNECTOR_TENANTS_FILE; default ./tenants.yaml).",
)
@click.pass_context
def cli(ctx: click.Context, tenants_path: Path | None) -> None:
    """ml-connector keeps IFS Cloud and Pipedrive in sync for many tenants.

    Process settings come from CONNECTOR_* environment variables (database, Redis,
    broker, encryption keys); tenants come from a YAML file without secrets.
    """
    settings = Settings()
    ctx.obj = CliContext(settings=settings, tenants_path=tenants_path or settings.tenants_file)


def _register() -> None:
    # One module per command group keeps each command's code next to its help text.
    from cli import commands

    for command in commands.ALL:
        cli.add_command(command)


_register()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConnectorError as error:  # a last resort: commands should raise ClickException
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
