"""`ml-connector sync`: run a tenant's IFS → Pipedrive sync, or show what it would do."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector import jobs
from connector.storage.database import Database
from connector.storage.idmap import CUSTOMER, ORDER
from connector.storage.runs import RunSummary, run_summary

ENTITY_CHOICES = {"customers": (CUSTOMER,), "orders": (ORDER,), "all": (CUSTOMER, ORDER)}


@contextmanager
def workers_for_cli(obj: CliContext) -> Iterator[bool]:
    """Yield True when this process must run the worker itself (no broker configured); its
    tasks then use this command's runtime (and so its --tenants file)."""
    from workers.embedded import embedded_worker, is_embedded
    from workers.runtime import set_runtime

    if not is_embedded():
        yield False
        return
    set_runtime(obj.runtime)
    with embedded_worker():
        yield True


PROGRESS_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal


def progress_line(summary: RunSummary) -> str:
    """The run's state in one line: done, retrying with the newest remote error, failed."""
    line = f"{summary.done}/{summary.queued} done, {summary.failed} failed"
    if summary.retrying:
        line += f", {summary.retrying} retrying: {_short(summary.last_retry_error)}"
    return line


def _short(error: str | None, width: int = 160) -> str:
    text = (error or "").splitlines()[0] if error else "(no error recorded)"
    return text if len(text) <= width else text[: width - 1] + "…"


def wait_for_run(
    database: Database,
    run_id: str,
    expected_entities: int,
    *,
    timeout_s: float,
    show_progress: bool = True,
    interactive: bool | None = None,
    every_s: float = PROGRESS_EVERY_S,
) -> RunSummary:
    """Poll the run's audit rows until every queued record has a final outcome, showing
    progress on stderr (unless not `show_progress`): a bar on a terminal, else a line every
    `every_s` seconds."""
    from connector.polling import wait_until

    stderr = sys.stderr
    interactive = stderr.isatty() if interactive is None else interactive
    next_line = time.monotonic() + every_s

    def poll(bar: Any) -> RunSummary:
        latest: list[RunSummary] = []

        def finished() -> bool:
            nonlocal next_line
            summary = run_summary(database, run_id)
            latest[:] = [summary]
            if bar is not None:
                # The total is known once the plan row is written; tasks may finish before.
                bar.length = max(summary.queued, summary.done, 1)
                bar.label = (
                    f"syncing ({summary.retrying} retrying: {_short(summary.last_retry_error, 60)})"
                    if summary.retrying
                    else "syncing"
                )
                bar.update(summary.done - bar.pos)
            elif show_progress and time.monotonic() >= next_line:
                click.echo(f"sync {run_id}: {progress_line(summary)}", err=True)
                next_line = time.monotonic() + every_s
            return summary.finished(expected_entities)

        if not wait_until(finished, timeout=timeout_s, interval=0.3):
            raise click.ClickException(_timeout_message(run_id, timeout_s, latest[0]))
        return latest[0]

    if not (show_progress and interactive):
        return poll(None)
    with click.progressbar(length=1, label="syncing", show_pos=True, file=stderr) as bar:
        summary = poll(bar)
    return summary


def _timeout_message(run_id: str, timeout_s: float, summary: RunSummary) -> str:
    head = f"run {run_id} did not finish within {timeout_s:.0f}s ({progress_line(summary)})"
    if summary.retrying:
        # The workers are there and working; a remote (or the limiter) keeps refusing.
        return (
            f"{head}; the workers keep retrying, the run goes on: follow it with "
            "`ml-connector audit list --status retrying`"
        )
    if summary.done or summary.planned_entities:
        return f"{head}; the workers are slow or busy: the run goes on in the background"
    return f"{head}; no worker has started it: are workers running on the queue?"


def _print_summary(summary: RunSummary, as_json: bool, seconds: float) -> None:
    data = summary.as_dict() | {"seconds": round(seconds, 2)}
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(
        f"created {summary.created}, updated {summary.updated}, unchanged {summary.unchanged}, "
        f"failed {summary.failed} (read {summary.read}, queued {summary.queued}) in {seconds:.1f}s"
    )
    if summary.deferred:
        click.echo(
            f"deferred {summary.deferred}: a rate budget asks for a longer wait than a queued "
            "task may sleep; the next scheduled plan syncs them"
        )
    requests = ", ".join(f"{k} {v}" for k, v in sorted(summary.requests.items())) or "none"
    click.echo(f"requests: {requests}")
    for error in summary.plan_errors:
        click.echo(f"plan failed: {error}")
    for failure in summary.failures[:20]:
        click.echo(f"  failed {failure['entity']} {failure['key']}: {failure['error']}")
    if summary.failed:
        click.echo(
            "see `ml-connector audit list --status failed`; fix the cause, then "
            "`ml-connector replay --failed`"
        )


def _dry_run(
    obj: CliContext, tenant_id: str, entities: tuple[str, ...], full: bool, as_json: bool
) -> None:
    from connector.errors import TransientError
    from connector.sync.engine import TenantSync

    with reported_errors():
        sync = TenantSync(obj.runtime, tenant_id, read_only=True)
        report: list[dict[str, Any]] = []
        counts = dict.fromkeys(DRY_RUN_COUNTS, 0)
        for entity in entities:
            plan = sync.plan(entity, full=full)
            counts["unchanged"] += plan.unchanged - plan.tombstoned
            counts["tombstoned"] += plan.tombstoned
            report += _tombstoned(sync, entity)
            for item in _checking(plan.items, entity):
                try:
                    result = sync.sync_record(
                        entity,
                        item.key,
                        snapshot=item.snapshot,
                        hint=item.hint,
                        full=full,
                        dry_run=True,
                    )
                except TransientError as error:  # a dry run does not retry: report it
                    counts["failed"] += 1
                    report.append(
                        {
                            "entity": entity,
                            "key": item.key,
                            "operation": "failed",
                            "error": str(error),
                        }
                    )
                    continue
                attempt = result.attempt
                operation = "failed" if attempt.status == "failed" else attempt.operation
                counts[operation if operation in counts else "unchanged"] += 1
                entry = {"entity": entity, "key": item.key, "operation": operation}
                if attempt.error and operation == "failed":
                    entry["error"] = attempt.error
                reason = _reason(attempt)
                if reason:
                    entry["reason"] = reason
                if attempt.request_summary and "payload" in attempt.request_summary:
                    entry["payload"] = attempt.request_summary["payload"]
                report.append(entry)
    if as_json:
        click.echo(json.dumps({"dry_run": True, "counts": counts, "records": report}, default=str))
        return
    for entry in report:
        detail = (
            entry.get("error")
            or ", ".join(sorted(entry.get("payload", {})))
            or entry.get("reason", "")
        )
        verb = "would " if entry["operation"] in ("create", "update", "close") else ""
        click.echo(f"{verb + entry['operation']:<16} {entry['entity']:<8} {entry['key']}  {detail}")
    click.echo(
        f"dry run: {counts['create']} to create, {counts['update']} to update, "
        f"{counts['close']} to close (gone from IFS), {counts['unchanged']} unchanged, "
        f"{counts['tombstoned']} tombstoned, {counts['ifs_missing']} gone from IFS and left, "
        f"{counts['failed']} failing; nothing was written"
    )


# What a dry run counts: operations, a respected delete (tombstoned), a record gone from IFS
# (closed, or left as it is), and records that would fail.
DRY_RUN_COUNTS = ("create", "update", "close", "unchanged", "tombstoned", "ifs_missing", "failed")


def _reason(attempt: Any) -> str | None:
    """Why a dry-run record is what it is: a skip's reason, or the lifecycle's decision."""
    if attempt.status == "skipped" and attempt.error:
        return str(attempt.error)
    life = (attempt.request_summary or {}).get("lifecycle")
    return str(life["reason"]) if isinstance(life, dict) and life.get("reason") else None


def _tombstoned(sync: Any, entity: str) -> list[dict[str, Any]]:
    """The report lines of the entity's tombstoned records (the plan leaves them out)."""
    lines = []
    for key in sync.idmap.tombstoned_keys(sync.tenant.id, entity):
        entry = sync.idmap.get(sync.tenant.id, entity, key)
        reason = entry.tombstone_reason if entry is not None else None
        lines.append({"entity": entity, "key": key, "operation": "tombstoned", "reason": reason})
    return lines


def _checking(items: list[Any], entity: str) -> Iterator[Any]:
    """The dry run's work items, with progress on stderr: a bar on a terminal, else a line
    at the start and every PROGRESS_EVERY_S seconds."""
    label = f"dry run: {entity}"
    if sys.stderr.isatty():
        with click.progressbar(items, label=label, show_pos=True, file=sys.stderr) as bar:
            yield from bar
        return
    click.echo(f"{label}: 0/{len(items)} checked", err=True)
    next_line = time.monotonic() + PROGRESS_EVERY_S
    for done, item in enumerate(items, 1):
        yield item
        if time.monotonic() >= next_line or done == len(items):
            click.echo(f"{label}: {done}/{len(items)} checked", err=True)
            next_line = time.monotonic() + PROGRESS_EVERY_S


@click.command()
@click.argument("tenant_id", metavar="TENANT")
@click.option(
    "--entity", type=click.Choice(sorted(ENTITY_CHOICES)), default="all", show_default=True
)
@click.option("--full", is_flag=True, help="Re-read everything and repair drift in Pipedrive.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be created, updated or closed, and what is tombstoned or gone "
    "from IFS; write nothing.",
)
@click.option(
    "--recreate-deleted",
    is_flag=True,
    help="With --full: lift the tombstones of records deleted in Pipedrive (policy respect) "
    "so this run creates them again.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait, showing progress on stderr (done, retrying with the last error, failed), "
    "and print a summary.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds --wait waits before giving up.",
)
@pass_context
def sync(
    obj: CliContext,
    tenant_id: str,
    entity: str,
    full: bool,
    recreate_deleted: bool,
    dry_run: bool,
    wait: bool,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Sync TENANT's IFS customers and orders to Pipedrive organizations and deals.

    Queues a plan on the workers (CONNECTOR_BROKER_URL). Without a broker configured the
    command runs an embedded worker itself and always waits. With --wait, the exit status
    is 2 when any record failed.
    """
    with reported_errors():
        obj.runtime.tenant(tenant_id)
    database = migrated_database(obj)
    entities = ENTITY_CHOICES[entity]
    if recreate_deleted and (not full or dry_run):
        raise click.UsageError("--recreate-deleted needs --full and cannot be a --dry-run")
    if recreate_deleted:
        from connector.storage.audit import AuditLog
        from connector.storage.idmap import IdMap
        from connector.sync.lifecycle import revive_tombstoned

        for name in entities:
            revived = revive_tombstoned(IdMap(database), AuditLog(database), tenant_id, name)
            if revived and not as_json:
                click.echo(f"recreating {len(revived)} deleted {name} record(s)", err=True)
    if dry_run:
        _dry_run(obj, tenant_id, entities, full, as_json)
        return
    from workers.app import enqueue

    run_id = uuid.uuid4().hex
    started = time.monotonic()
    with workers_for_cli(obj) as embedded, reported_errors():
        enqueue(
            jobs.PLAN_SYNC,
            {
                "tenant": tenant_id,
                "entity": entities[0] if len(entities) == 1 else "all",
                "full": full,
                "run_id": run_id,
            },
        )
        if not (wait or embedded):
            click.echo(f"queued sync run {run_id}; follow it with `ml-connector audit list`")
            return
        summary = wait_for_run(
            obj.runtime.database,
            run_id,
            len(entities),
            timeout_s=timeout_s,
        )
    _print_summary(summary, as_json, time.monotonic() - started)
    if summary.failed:
        raise SystemExit(2)
