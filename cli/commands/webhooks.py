"""`ml-connector webhooks ensure|show`: the tenant's Pipedrive webhooks and received events."""

from __future__ import annotations

import json

import click
from sqlalchemy import func, select

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.storage.models import WebhookEvent


@click.group(short_help="Register, repair and inspect the Pipedrive webhooks of a tenant.")
def webhooks() -> None:
    """Register, repair and inspect the Pipedrive webhooks of a tenant (v2: deal changes,
    deletes of deals and organizations)."""


@webhooks.command("ensure")
@click.argument("tenant")
@pass_context
def webhooks_ensure(obj: CliContext, tenant: str) -> None:
    """Register TENANT's webhooks (deal changes, deal and organization deletes), or repair
    them (stale credentials, banned, wrong version or events).

    Basic credentials are generated and stored in the vault when there are none; they are
    never printed. Safe to run again: a healthy webhook is left alone, also when Pipedrive's
    listing hides its credentials (the fingerprint kept at registration vouches for them).
    """
    from connector.webhooks.registration import ensure_webhook

    migrated_database(obj)
    with reported_errors():
        status = ensure_webhook(obj.runtime, tenant)
    click.echo(f"{status.action}: webhooks → {status.subscription_url}")
    for slot, webhook_id in sorted(status.webhook_ids.items()):
        click.echo(f"  {slot}: webhook {webhook_id}")
    for webhook_id in status.removed:
        click.echo(f"removed faulty webhook {webhook_id}")
    for problem in status.problems:
        click.echo(f"warning: {problem}", err=True)


@webhooks.command("show")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def webhooks_show(obj: CliContext, tenant: str, as_json: bool) -> None:
    """Show TENANT's Pipedrive webhooks (no passwords) and its received events by status."""
    from connector.webhooks.registration import webhooks_for

    database = migrated_database(obj)
    with reported_errors():
        registered = webhooks_for(obj.runtime, tenant)
    with database.session() as session:
        counts = dict(
            session.execute(
                select(WebhookEvent.status, func.count())
                .where(WebhookEvent.tenant == tenant)
                .group_by(WebhookEvent.status)
            ).all()
        )
    if as_json:
        click.echo(json.dumps({"webhooks": registered, "events": counts}, default=str, indent=2))
        return
    if not registered:
        click.echo("no Pipedrive webhook points at the subscription URL (run `webhooks ensure`)")
    for webhook in registered:
        event = f"{webhook.get('event_action')}.{webhook.get('event_object')}"
        click.echo(
            f"webhook {webhook.get('id')}: {event}"
            f" v{webhook.get('version')} active={webhook.get('is_active')} "
            f"last delivery {webhook.get('last_delivery_time')} "
            f"(HTTP {webhook.get('last_http_status')})"
        )
    summary = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    click.echo(f"events received: {summary or 'none'}")
