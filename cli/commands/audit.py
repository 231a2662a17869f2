"""`ml-connector audit list|show` and `ml-connector replay`: the audit trail and its replays."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.replay import Requeued
from connector.storage.audit import FAILED, FINAL_STATUSES, SKIPPED, STATUSES, AuditLog
from connector.storage.database import Database
from connector.storage.idmap import CUSTOMER, ORDER
from connector.storage.models import AuditRecord


def _row(row: AuditRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "direction": row.direction,
        "entity": row.entity,
        "record_key": row.record_key,
        "operation": row.operation,
        "status": row.status,
        "attempt": row.attempt,
        "occurrences": row.occurrences,
        "error": row.error,
        "correlation_id": row.correlation_id,
        "replay_of": row.replay_of,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "duration_ms": row.duration_ms,
    }


def parse_since(value: str | None) -> datetime | None:
    """An ISO time, or a span back from now such as 30m, 6h, 2d."""
    if not value:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected an ISO time (2026-11-28T10:00) or a span like 30m, 6h, 2d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.group(short_help="List and show audit rows, and one record's history.")
def audit() -> None:
    """Read the audit trail: one row per attempt to move a record, in either direction;
    `history` tells one record's whole story.

    Identical failures of one record share a row (OCCURRENCES, first and last time); a
    failed row fixed by a later success of its record is "superseded".
    """


@audit.command("list")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant.")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default=None,
)
@click.option("--since", default=None, help="ISO time or span (30m, 6h, 2d).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def audit_list(
    obj: CliContext,
    tenant_id: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List audit rows, newest first."""
    database = migrated_database(obj)
    rows = AuditLog(database).list(
        tenant=tenant_id, status=status, since=parse_since(since), limit=limit
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(_row(row)))
        return
    if not rows:
        click.echo("no audit rows match")
        return
    click.echo(
        f"{'ID':>7}  {'TENANT':<12} {'ENTITY':<9} {'KEY':<16} {'OPERATION':<10} "
        f"{'STATUS':<10} ERROR"
    )
    for row in rows:
        error = (row.error or "").splitlines()[0][:70] if row.error else ""
        if (row.occurrences or 1) > 1:  # identical failures folded into this row
            error = f"[{row.occurrences}x since {row.started_at:%Y-%m-%d %H:%M}] {error}"
        click.echo(
            f"{row.id:>7}  {row.tenant:<12} {row.entity:<9} {row.record_key:<16} "
            f"{row.operation:<10} {row.status:<10} {error}"
        )


@audit.command("show")
@click.argument("audit_id", type=int, metavar="ID")
@pass_context
def audit_show(obj: CliContext, audit_id: int) -> None:
    """Show one audit row in full, with its request and response summaries (JSON)."""
    database = migrated_database(obj)
    row = AuditLog(database).get(audit_id)
    if row is None:
        raise click.ClickException(f"no audit row {audit_id}")
    data = _row(row) | {
        "request_summary": row.request_summary,
        "response_summary": row.response_summary,
        "replay_task": row.replay_task,
        "replay_args": row.replay_args,
    }
    click.echo(json.dumps(data, indent=2, default=str))


@audit.command("history")
@click.argument("tenant_id", metavar="TENANT")
@click.argument("entity", type=click.Choice([CUSTOMER, ORDER]))
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the story as one JSON object.")
@pass_context
def audit_history(obj: CliContext, tenant_id: str, entity: str, key: str, as_json: bool) -> None:
    """Tell the story of TENANT's ENTITY (customer or order) with IFS key KEY.

    Every sync attempt (with the fields it changed) and stage push, every webhook event about
    any Pipedrive record it was ever linked to (deletes, merges, archives), and what its life
    did to the link (relinked, unlinked, tombstoned, relink, gone from IFS), oldest first;
    then where it stands now. The exit status is 1 for an unknown tenant or record.
    """
    from connector.storage.story import record_story

    with reported_errors():
        obj.runtime.tenant(tenant_id)
    database = migrated_database(obj)
    story = record_story(database, tenant_id, entity, key)
    if not story.known:
        raise click.ClickException(
            f"tenant {tenant_id!r} has no {entity} {key!r}: no id-map entry and no audit row "
            f"(KEY is the IFS key: a customer id or an order number)"
        )
    if as_json:
        click.echo(json.dumps(story.as_dict(), default=str))
        return
    click.echo(f"{tenant_id} {entity} {key}: {story.state}")
    if story.pipedrive_ids:
        ids = ", ".join(str(each) for each in story.pipedrive_ids)
        click.echo(f"Pipedrive {story.pipedrive_object}s it was linked to: {ids}")
    click.echo(f"{'WHEN':<20} {'SOURCE':<16} {'WHAT':<16} {'STATUS':<10} DETAIL")
    for chapter in story.chapters():
        reference = f"#{chapter.audit_id}" if chapter.audit_id else f"event {chapter.event_id}"
        detail = "; ".join(part for part in (chapter.detail, reference) if part)
        click.echo(
            f"{chapter.at:%Y-%m-%d %H:%M:%S}  {chapter.source:<16} {chapter.what:<16} "
            f"{chapter.status:<10} {detail}"
        )


@click.command()
@click.argument("audit_ids", type=int, nargs=-1, metavar="[ID]...")
@click.option(
    "--failed", "all_failed", is_flag=True, help="Every record whose newest attempt failed."
)
@click.option("--tenant", "tenant_id", default=None, help="With --failed: only this tenant.")
@click.option("--since", default=None, help="With --failed: ISO time or span (30m, 6h, 2d).")
@click.option("--wait", is_flag=True, help="Run the replays and wait for their outcome.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds --wait waits for the outcomes.",
)
@pass_context
def replay(
    obj: CliContext,
    audit_ids: tuple[int, ...],
    all_failed: bool,
    tenant_id: str | None,
    since: str | None,
    wait: bool,
    timeout_s: float,
) -> None:
    """Re-queue failed records: by audit row ID, or all with --failed. Replay is idempotent.

    A plan row (key "*") is replayed as a new plan of its entity. With --wait, each outcome
    is printed with its reason, and the exit status is 2 when any replay failed or had no
    outcome in time.
    """
    if bool(audit_ids) == all_failed:
        raise click.UsageError("give audit row IDs or --failed (not both)")
    database = migrated_database(obj)
    from cli.commands.sync import workers_for_cli
    from connector.replay import Replay
    from workers.app import enqueue

    log = AuditLog(database)
    replays = Replay(log, enqueue)
    with reported_errors():
        if all_failed:
            rows = replays.latest_failed(tenant_id, parse_since(since))
        else:
            rows = []
            for audit_id in audit_ids:
                row = log.get(audit_id)
                if row is None:
                    raise click.ClickException(f"no audit row {audit_id}")
                if row.status != FAILED:
                    raise click.ClickException(
                        f"audit row {audit_id} is {row.status}, not failed: nothing to replay"
                    )
                rows.append(row)
    with workers_for_cli(obj) as embedded, reported_errors():
        requester = f"cli:{getpass.getuser()}"
        tickets = [replays.queue(row, requester) for row in rows]
        queued = [ticket for ticket in tickets if ticket.queued]
        click.echo(
            f"queued {len(queued)} replay(s): "
            f"{', '.join(str(ticket.audit_id) for ticket in queued) or 'none'}"
        )
        for ticket in tickets:
            if not ticket.queued:
                click.echo(f"  {ticket.audit_id}: not queued: {ticket.reason}")
        if queued and (wait or embedded) and not _wait_for_replays(obj, queued, timeout_s):
            raise SystemExit(2)


def _wait_for_replays(obj: CliContext, tickets: list[Requeued], timeout_s: float) -> bool:
    """Wait for each replay's outcome and print it with its reason; True if none failed or
    was still running at the end."""
    import time

    from connector.storage.runs import run_summary

    deadline = time.monotonic() + timeout_s
    database = obj.runtime.database
    records = [ticket.audit_id for ticket in tickets if ticket.run_id is None]
    plans = {ticket.audit_id: ticket for ticket in tickets if ticket.run_id is not None}
    outcome: dict[int, tuple[str, str | None]] = {}
    while True:
        outcome = _record_outcomes(database, records)
        for audit_id, ticket in plans.items():
            summary = run_summary(database, str(ticket.run_id))
            if summary.finished(ticket.entities):
                failed = summary.plan_errors or (
                    [f"{summary.failed} record(s) failed"] if summary.failed else []
                )
                outcome[audit_id] = (
                    (FAILED, "; ".join(failed))
                    if failed
                    else (
                        "succeeded",
                        f"re-planned as run {ticket.run_id}: queued {summary.queued}, "
                        f"created {summary.created}, updated {summary.updated}",
                    )
                )
        if len(outcome) == len(tickets) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    good = True
    for ticket in tickets:
        status, detail = outcome.get(ticket.audit_id, ("still running", None))
        if status not in ("succeeded", SKIPPED):
            good = False
        if status == "still running":
            detail = f"no outcome within {timeout_s:.0f}s; see `ml-connector audit list`"
        click.echo(f"  {ticket.audit_id}: {status}" + (f" ({detail})" if detail else ""))
    return good


def _record_outcomes(database: Database, audit_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """The newest final outcome (status, error or skip reason) of each replayed row's job."""
    from sqlalchemy import select

    if not audit_ids:
        return {}
    with database.session() as session:
        rows = session.scalars(
            select(AuditRecord)
            .where(
                AuditRecord.replay_of.in_(audit_ids),
                AuditRecord.status.in_(FINAL_STATUSES),
            )
            .order_by(AuditRecord.id)
        )
        return {row.replay_of: (row.status, row.error) for row in rows if row.replay_of is not None}
