"""`ml-connector keys generate|rotate`: the Fernet keys that encrypt stored credentials."""

from __future__ import annotations

import click
from cryptography.fernet import Fernet

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context


@click.group(short_help="Generate and rotate the credential encryption keys.")
def keys() -> None:
    """Manage CONNECTOR_ENCRYPTION_KEYS (comma-separated Fernet keys, newest first).

    \b
    Rotating to a new key:
      1. ml-connector keys generate            (prints NEW)
      2. CONNECTOR_ENCRYPTION_KEYS=NEW,OLD     (everywhere; old data stays readable)
      3. ml-connector keys rotate              (re-encrypts every credential with NEW)
      4. CONNECTOR_ENCRYPTION_KEYS=NEW         (OLD can now be destroyed)
    """


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random Fernet key (store it like a password; it is not saved anywhere)."""
    click.echo(Fernet.generate_key().decode("ascii"))


@keys.command("rotate")
@pass_context
def keys_rotate(obj: CliContext) -> None:
    """Re-encrypt every stored credential with the newest (first) key, all or nothing."""
    migrated_database(obj)
    with reported_errors():
        count = obj.runtime.vault.rotate()
    click.echo(
        f"re-encrypted {count} credential(s) with the first key of CONNECTOR_ENCRYPTION_KEYS; "
        "the other keys can now be removed"
    )
