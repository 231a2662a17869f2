"""`ml-connector check TENANT`: prove both remotes accept the tenant's credentials (reads only)."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.diagnostics.probe import CheckReport, SystemCheck, check_tenant

_INDENT = " " * 11


def _headroom_lines(system: SystemCheck) -> list[str]:
    lines = []
    reported = system.headroom.get("pipedrive")
    if reported and any(value is not None for value in reported.values()):
        daily = reported.get("x-daily-requests-left")
        lines.append(
            f"Pipedrive says: {reported.get('x-ratelimit-remaining')}/"
            f"{reported.get('x-ratelimit-limit')} requests left in its 2 s window; daily "
            f"tokens left: {daily if daily is not None else 'not reported on reads'}"
        )
    ours: dict[str, Any] = system.headroom.get("ours") or {}
    if "limits" in ours:
        shown = "; ".join(
            f"{limit['name']} {limit['remaining']}/{limit['capacity']} left per "
            f"{limit['window_s']:g} s"
            for limit in ours["limits"]
        )
        note = f"; {ours['note']}" if "note" in ours else ""
        lines.append(f"our limiter: {shown}{note}")
    elif ours:
        lines.append(f"our limiter: {ours.get('error')}")
    return lines


def _print_report(report: CheckReport) -> None:
    click.echo(f"tenant {report.tenant}")
    for system in report.systems:
        if system.ok:
            done = ", ".join(f"{step.name}: {step.detail}" for step in system.steps)
            click.echo(f"{system.label:<10} OK     {done}")
        else:
            failed = system.steps[-1].name if system.steps else "start"
            click.echo(f"{system.label:<10} FAILED at {failed}: {system.error}")
            click.echo(f"{_INDENT}tried: {system.tried}")
            click.echo(f"{_INDENT}fix: {system.fix}")
        for line in _headroom_lines(system):
            click.echo(f"{_INDENT}{line}")
        _print_fit(system)
    fit = report.fit
    if not fit.ok:
        click.echo(f"does not fit: {len(fit.errors)} problem(s) above")
    click.echo("all good" if report.ok else "check failed: fix the above and run it again")


_MARKS = {"error": "ERROR", "warning": "WARN ", "info": "ok   "}


def _print_fit(system: SystemCheck) -> None:
    if not system.findings:
        return
    click.echo(f"{'':<10} fit of the tenant's configuration:")
    for finding in system.findings:
        click.echo(f"{_INDENT}{_MARKS[finding.level]} {finding.subject}: {finding.message}")
        if finding.fix:
            click.echo(f"{_INDENT}      fix: {finding.fix}")


@click.command()
@click.argument("tenant_id", metavar="TENANT")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_context
def check(obj: CliContext, tenant_id: str, as_json: bool) -> None:
    """Check TENANT's set-up: authenticate to IFS and Pipedrive and read a record from each.

    Reads one customer and one order from IFS, and the integration user and one deal (or
    organization) from Pipedrive; never writes to either. Shows the rate-limit headroom
    Pipedrive reports and that of the connector's own limiter. Every failure names the
    system, what was tried, and what to fix.

    Then checks that the tenant's configuration fits: the mapped properties (the extra
    fields' included), stage-map actions (and their parameters) and patched properties
    against each projection's IFS $metadata; the configured Pipedrive fields (name, type
    and enum options), pipeline and stages, the plan's burst limit against
    pipedrive.burst_limit and, when a search answer reports a limit of its own,
    pipedrive.search_burst_limit (one search is made), and OAuth scopes. Exit status 0 when
    both systems are OK and the configuration fits, else 1.
    """
    with reported_errors():
        obj.runtime.tenant(tenant_id)
    migrated_database(obj)  # the credentials live in the database
    with reported_errors():
        report = check_tenant(obj.runtime, tenant_id, tenants_file=str(obj.tenants_path))
    if as_json:
        click.echo(json.dumps(report.as_dict(), default=str))
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(1)
