"""`ml-connector reconcile`: apply the deal stage changes no webhook delivered, now."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from cli.commands.audit import parse_since
from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context


@click.command()
@click.argument("tenant_id", metavar="TENANT")
@click.option(
    "--since",
    default=None,
    help="Look at deals updated since this ISO time or span (30m, 6h, 2d) instead of since "
    "the last reconciliation.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@pass_context
def reconcile(obj: CliContext, tenant_id: str, since: str | None, as_json: bool) -> None:
    """Reconcile TENANT now, in this process, as beat does on the tenant's schedule.

    Lists the Pipedrive deals updated since the last reconciliation and pushes each linked
    deal's stage change that no webhook delivered to its IFS order (same rules, echoes and
    ordering as a webhook); linked deals listed as deleted are followed in the id map by
    lifecycle.on_pipedrive_delete. The exit status is 2 when any push failed (the watermark
    then stays, so the next run tries those deals again).
    """
    from connector.stage_push.reconcile import reconcile_stages

    with reported_errors():
        obj.runtime.tenant(tenant_id)
    migrated_database(obj)
    with reported_errors():
        summary = reconcile_stages(obj.runtime, tenant_id, parse_since(since))
    if as_json:
        click.echo(json.dumps(asdict(summary), default=str))
    else:
        since_text = summary.since.isoformat() if summary.since else "the beginning"
        click.echo(
            f"reconciled {tenant_id}: {summary.deals_seen} deal(s) updated since {since_text}, "
            f"{summary.linked} linked: {summary.applied} applied to IFS, {summary.ignored} "
            f"ignored, {summary.already_seen} seen before, {summary.failed} failed; "
            f"{summary.deleted} deleted deal(s) followed"
        )
        for line in summary.followed:
            click.echo(f"  {line}")
        for error in summary.errors:
            click.echo(f"  failed: {error}", err=True)
        watermark = summary.watermark.isoformat() if summary.watermark else "none"
        click.echo(f"next run looks at deals updated since {watermark}")
    if summary.failed:
        raise SystemExit(2)
