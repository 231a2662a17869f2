"""`ml-connector console`: serve the operator console on one machine; make password hashes."""

from __future__ import annotations

import os
import sys

import click

from cli.context import CliContext, pass_context
from connector.errors import ConfigError


@click.group(invoke_without_command=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; the console belongs inside the network, never on the internet.",
)
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.pass_context
def console(ctx: click.Context, port: int, host: str, workers: int) -> None:
    """Serve the operator console (gunicorn console.wsgi:app) on one machine.

    Needs CONNECTOR_CONSOLE_USERS (`name:<hash>`, see `console hash-password`) or
    CONNECTOR_CONSOLE_TRUSTED_HEADER behind an authenticating proxy; replays go to the
    workers through CONNECTOR_BROKER_URL.
    """
    if ctx.invoked_subcommand is not None:
        return
    obj: CliContext = ctx.ensure_object(CliContext)
    from console.app import create_app

    try:
        create_app(obj.runtime)  # the same checks gunicorn's workers make, with a clean error
    except ConfigError as error:
        raise click.ClickException(str(error)) from error
    os.environ["CONNECTOR_TENANTS_FILE"] = str(obj.tenants_path)
    click.echo(f"operator console on http://{host}:{port}", err=True)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--no-control-socket",
        "-w",
        str(workers),
        "-b",
        f"{host}:{port}",
        "console.wsgi:app",
    ]
    os.execv(sys.executable, argv)


@console.command("hash-password")
@pass_context
def hash_password(obj: CliContext) -> None:
    """Prompt for a password and print its hash for CONNECTOR_CONSOLE_USERS (name:hash)."""
    from werkzeug.security import generate_password_hash

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    click.echo(generate_password_hash(password))
