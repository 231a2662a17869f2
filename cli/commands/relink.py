"""`ml-connector relink`: bring back a record deleted or merged in Pipedrive."""

from __future__ import annotations

import json

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.storage.idmap import CUSTOMER, ORDER


@click.command()
@click.argument("tenant_id", metavar="TENANT")
@click.argument("entity", type=click.Choice([CUSTOMER, ORDER]))
@click.argument("key")
@click.option(
    "--to",
    "pipedrive_id",
    type=int,
    default=None,
    help="Link to this Pipedrive record id (default: adopt a record carrying the key, or create).",
)
@click.option("--no-sync", is_flag=True, help="Only change the id map; the next sync writes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def relink(
    obj: CliContext,
    tenant_id: str,
    entity: str,
    key: str,
    pipedrive_id: int | None,
    no_sync: bool,
    as_json: bool,
) -> None:
    """Relink TENANT's ENTITY (customer or order) KEY: lift its tombstone (a delete in
    Pipedrive respected under lifecycle.on_pipedrive_delete: respect) and sync it now.

    The exit status is 2 when the sync of the record failed (see `audit list`).
    """
    from connector.storage.audit import FAILED, AuditLog
    from connector.storage.idmap import IdMap
    from connector.sync.engine import TenantSync
    from connector.sync.lifecycle import relink as relink_record

    with reported_errors():
        obj.runtime.tenant(tenant_id)
    database = migrated_database(obj)
    with reported_errors():
        before = relink_record(
            IdMap(database),
            AuditLog(database),
            tenant_id,
            entity,
            key,
            pipedrive_id,
            why="ml-connector relink",
        )
        result = None
        if not no_sync:
            result = TenantSync(obj.runtime, tenant_id).sync_record(entity, key)
    entry = IdMap(database).get(tenant_id, entity, key)
    now = entry.pipedrive_id if entry is not None else None
    document = {
        "tenant": tenant_id,
        "entity": entity,
        "key": key,
        "from_pipedrive_id": before,
        "pipedrive_id": now,
        "sync": None if result is None else result.outcome.value,
        "error": None if result is None else result.attempt.error,
    }
    if as_json:
        click.echo(json.dumps(document))
    else:
        done = "relinked" if result is None else f"relinked and {result.outcome.value}"
        click.echo(f"{entity} {key}: {done}; Pipedrive id {before} → {now}")
        if result is not None and result.attempt.status == FAILED:
            click.echo(f"sync failed: {result.attempt.error}", err=True)
    if result is not None and result.attempt.status == FAILED:
        raise SystemExit(2)
