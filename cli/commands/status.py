"""`ml-connector status`: per tenant the last run, waiting failures, stored records, webhook,
budget, queue; tenants no longer in the file that still have records stored."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.diagnostics.backlog import AbsentTenant, absent_tenants
from connector.diagnostics.queues import QueueStatus, queue_status
from connector.diagnostics.status import TenantStatus, tenant_status
from connector.live_config import ConfigCheck, config_checks
from connector.tenants import TenantsReading, read_tenants

_INDENT = "  "


def _last_run_line(run: dict[str, Any] | None) -> str:
    if run is None:
        return "last sync: never"
    when = run["finished_at"] or run["started_at"]
    state = "" if run["state"] == "finished" else f" (running: {run['queued']} queued)"
    if run.get("waiting_for"):
        state = f" (running: {run['queued']} queued, waiting for its budget, not stuck)"
    return (
        f"last sync: {when}{state}: created {run['created']}, updated {run['updated']}, "
        f"unchanged {run['unchanged']}, failed {run['failed']} (run {run['run_id']})"
    )


def _webhook_line(webhook: dict[str, Any]) -> str:
    if webhook["registered"]:
        text = f"webhook: registered (id {webhook['webhook_id']})"
    else:
        text = "webhook: not registered"
    text += (
        f"; last event received {webhook['last_event_at'] or 'never'}; "
        f"{webhook['events_received']} received, {webhook['events_failed']} failed"
    )
    remote = webhook.get("remote")
    if remote and "error" not in remote:
        active = "active" if remote["active"] else "NOT active"
        text += f"; Pipedrive: {len(remote['webhooks'])} webhook(s), {active}"
    return text


def _headroom_line(system: str, budget: dict[str, Any]) -> str:
    if "limits" in budget:
        shown = "; ".join(
            f"{limit['name']} {limit['remaining']}/{limit['capacity']} left per "
            f"{limit['window_s']:g} s"
            for limit in budget["limits"]
        )
        note = f"; {budget['note']}" if "note" in budget else ""
        return f"{system} budget: {shown}{note}"
    return f"{system} budget: {budget.get('error')}"


def _backlog_line(backlog: dict[str, Any]) -> str:
    if not backlog.get("waiting") and not backlog.get("in_flight"):
        return "stored records: none"
    text = (
        f"stored records: {backlog['waiting']} waiting ({backlog['due']} due"
        + (
            f", oldest stored {backlog['oldest_waiting_at']}"
            if backlog["oldest_waiting_at"]
            else ""
        )
        + f"), {backlog['in_flight']} released and not finished"
    )
    if "requests_per_record" in backlog:
        text += f"; {backlog['requests_per_record']:g} Pipedrive requests per record lately"
    if "error" in backlog:
        return f"{text}; why they wait: {backlog['error']}"
    waits = backlog.get("waits_for") or []
    if waits:
        text += "; waiting for: " + "; ".join(hold["detail"] for hold in waits)
    return text


def _absent_line(absent: AbsentTenant) -> str:
    if not absent.ours:
        when = (
            "not served by this deployment's dispatcher: kept until "
            f"`ml-connector tenant drop-backlog {absent.tenant}`"
        )
    elif absent.absent_since:
        when = (
            f"absent since {absent.absent_since}; dropped with an audit row at "
            f"{absent.dropped_at} unless it comes back (CONNECTOR_ABSENT_TENANT_BACKLOG_DAYS), "
            f"or now with `ml-connector tenant drop-backlog {absent.tenant}`"
        )
    else:
        when = "the dispatcher notes its absence within a minute"
    return (
        f"tenant {absent.tenant} not in the tenants file: {absent.waiting} stored record(s) "
        f"kept ({when})"
    )


def _print_tenant(status: TenantStatus) -> None:
    click.echo(f"tenant {status.tenant}")
    click.echo(f"{_INDENT}{_last_run_line(status.last_run)}")
    waiting = f"{_INDENT}failed records waiting: {status.failed_waiting}"
    if status.failed_keys:
        more = " …" if status.failed_waiting > len(status.failed_keys) else ""
        waiting += f" ({', '.join(status.failed_keys)}{more})"
    click.echo(waiting)
    for mark in status.watermarks:
        click.echo(
            f"{_INDENT}{mark['entity']}: last run {mark['last_run_at']} {mark['last_status']}"
        )
    if status.backlog:
        click.echo(f"{_INDENT}{_backlog_line(status.backlog)}")
    click.echo(f"{_INDENT}{_webhook_line(status.webhook)}")
    click.echo(f"{_INDENT}{_headroom_line('IFS', status.headroom['ifs'])}")
    click.echo(f"{_INDENT}{_headroom_line('Pipedrive', status.headroom['pipedrive'])}")
    for problem in status.problems:
        click.echo(f"{_INDENT}! {problem}")


def _print_queue(queue: QueueStatus) -> None:
    if queue.error:
        click.echo(f"queue: {queue.error}")
    elif queue.depths is not None:
        depths = ", ".join(f"{name} {depth} waiting" for name, depth in queue.depths.items())
        click.echo(f"queue: {depths} (broker {queue.broker})")
    else:
        click.echo(f"queue: {queue.note} (broker {queue.broker})")


@click.command()
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--remote", is_flag=True, help="Also ask Pipedrive which webhooks it has for each tenant."
)
@pass_context
def status(obj: CliContext, tenant_id: str | None, as_json: bool, remote: bool) -> None:
    """Show each tenant's last sync, overdue syncs, failed records waiting, stored records
    (waiting, released, the oldest, and what they wait for: the burst or daily budget, a
    pause after Pipedrive's 403), webhook, rate-limit headroom, tenants no longer in the file
    that still have records stored, problems of the tenants file (as read here and as the running
    workers, beat and receivers last saw it), and the depth of the workers' queue.

    Reads the database, Redis and our limiter only (with --remote, also Pipedrive's
    webhook list).
    Problems are listed with the command that fixes them; the exit status is 1 only when
    the status cannot be read at all (unknown tenant, database not migrated).
    """
    with reported_errors():
        # Leniently, as the running processes read it: a broken tenant is reported, and
        # every other tenant's status is shown all the same.
        reading = read_tenants(obj.tenants_path)
        obj.runtime.serve_tenants(reading.tenants, None)
        broken = {each: found for each, found in reading.problems.items() if each is not None}
        if tenant_id and tenant_id in broken:
            tenant_ids = []
        else:
            tenant_ids = [obj.runtime.tenant(tenant_id).id] if tenant_id else list(reading.tenants)
    migrated_database(obj)
    with reported_errors():
        statuses = [tenant_status(obj.runtime, each, remote=remote) for each in tenant_ids]
    statuses += [
        _broken_tenant(each, found) for each, found in broken.items() if tenant_id in (None, each)
    ]
    file_problems = [_config_problem(found) for found in reading.problems.get(None, [])]
    absent: list[AbsentTenant] = []
    if tenant_id is None:
        with reported_errors():
            absent = absent_tenants(obj.runtime, {*reading.tenants, *broken})
    checks = config_checks(obj.runtime)
    queues = [obj.settings.queue, obj.settings.effective_interactive_queue]
    queue = queue_status(obj.settings.effective_broker_url, queues)
    if as_json:
        document = {
            "tenants": [each.as_dict() for each in statuses],
            "tenants_file_problems": file_problems,
            "tenants_not_in_file": [each.as_dict() for each in absent],
            "config_checks": [check.as_dict() for check in checks],
            "queue": queue.as_dict(),
        }
        click.echo(json.dumps(document, default=str))
        return
    for problem in file_problems:
        click.echo(f"! {problem}")
    for line in _reported_problems(checks, reading):
        click.echo(f"! {line}")
    for gone in absent:
        click.echo(f"! {_absent_line(gone)}")
    if not statuses:
        click.echo(f"no tenants defined in {obj.tenants_path}")
    for each in statuses:
        if each.config_problems_only:
            click.echo(f"tenant {each.tenant}")
            for problem in each.problems:
                click.echo(f"{_INDENT}! {problem}")
        else:
            _print_tenant(each)
    _print_queue(queue)


def _reported_problems(checks: list[ConfigCheck], reading: TenantsReading) -> list[str]:
    """What the running processes' last checks found, message by message, with who saw it:
    the workers or beat may see a broken file (another host's copy, a cron only Celery
    refuses) that this command's own reading does not."""
    seen: dict[str, list[str]] = {}
    for check in checks:
        for message in check.messages():
            if not message.startswith("("):  # the "(keeping … until fixed)" notes
                seen.setdefault(message, []).append(check.where)
    own = {message for found in reading.problems.values() for message in found}
    lines = []
    for message, where in seen.items():
        also = "also " if message in own else ""
        lines.append(f"tenants file {also}reported by {', '.join(where)}: {message}")
    return lines


def _config_problem(message: str) -> str:
    return (
        f"tenants file: {message} (running workers, beat and receiver keep this tenant's last "
        "good configuration, if they had one, until the file is fixed)"
    )


def _broken_tenant(tenant_id: str, found: list[str]) -> TenantStatus:
    status = TenantStatus(tenant_id, config_problems_only=True)
    status.problems = [_config_problem(message) for message in found]
    return status
