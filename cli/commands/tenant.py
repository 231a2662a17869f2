"""`ml-connector tenant list|show|validate|drop-backlog`: inspect and check the tenants file;
drop the stored records of a tenant taken out of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml

from cli.commands.credentials import as_utc
from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.errors import ConfigError, ConnectorError
from connector.storage.vault import required_credentials
from connector.tenants import TenantConfig, read_tenants

if TYPE_CHECKING:
    from connector.diagnostics.probe import CheckReport


def _tenants(obj: CliContext) -> dict[str, TenantConfig]:
    with reported_errors():
        return obj.runtime.tenants


@click.group(short_help="List, show and validate tenants.")
def tenant() -> None:
    """Inspect the tenants file (--tenants / CONNECTOR_TENANTS_FILE)."""


@tenant.command("list")
@pass_context
def tenant_list(obj: CliContext) -> None:
    """List tenants with their IFS and Pipedrive endpoints and sync schedule."""
    tenants = _tenants(obj)
    if not tenants:
        click.echo(f"{obj.tenants_path} defines no tenants")
        return
    width = max(len("TENANT"), *(len(tenant_id) for tenant_id in tenants))
    click.echo(f"{'TENANT':<{width}}  {'SCHEDULE':<14}  IFS -> PIPEDRIVE")
    for tenant_id, config in tenants.items():
        click.echo(
            f"{tenant_id:<{width}}  {config.schedule:<14}  "
            f"{config.ifs.base_url} -> {config.pipedrive.api_domain}"
        )


def _credential_report(obj: CliContext, config: TenantConfig) -> dict[str, Any]:
    migrated_database(obj)
    with reported_errors():
        stored = {
            (system, name): updated_at
            for _, system, name, updated_at in obj.runtime.vault.names(config.id)
        }
    missing = [
        f"{system}/{name}"
        for system, name in required_credentials(config)
        if (system, name) not in stored
    ]
    return {
        "stored": [
            f"{system}/{name} (updated {as_utc(updated_at):%Y-%m-%d %H:%M:%S} UTC)"
            for (system, name), updated_at in sorted(stored.items())
        ],
        "missing": missing,
    }


@tenant.command("show")
@click.argument("tenant_id", metavar="ID")
@pass_context
def tenant_show(obj: CliContext, tenant_id: str) -> None:
    """Print tenant ID's effective configuration (defaults filled in) as YAML, and which
    credentials are stored or still missing (names only, never values)."""
    _tenants(obj)
    with reported_errors():
        config = obj.runtime.tenant(tenant_id)
    document = config.model_dump(mode="json", exclude={"id"})
    click.echo(f"# effective configuration of tenant {tenant_id!r} from {obj.tenants_path}")
    click.echo(yaml.safe_dump({tenant_id: document}, sort_keys=False, allow_unicode=True), nl=False)
    report = _credential_report(obj, config)
    click.echo("# credentials in the vault (names only)")
    click.echo(yaml.safe_dump({"credentials": report}, sort_keys=False), nl=False)
    if report["missing"]:
        click.echo(
            "missing credentials; store each with `ml-connector credentials set "
            f"{tenant_id} SYSTEM NAME`",
            err=True,
        )


@tenant.command("validate")
@click.argument(
    "path", required=False, type=click.Path(path_type=Path, dir_okay=False), default=None
)
@click.option(
    "--remote",
    is_flag=True,
    help="Also run `check` (probes and fit report, reads only) for every tenant.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: ok, the file's problems, and with --remote each tenant's "
    "check report (as `check --json`).",
)
@pass_context
def tenant_validate(obj: CliContext, path: Path | None, remote: bool, as_json: bool) -> None:
    """Check a tenants file (PATH, default the --tenants file) and print each problem.

    With --remote, also reach every tenant's IFS and Pipedrive as `ml-connector check`
    does and report whether its configuration fits them. Exit status 0 when the file is
    valid (and, with --remote, every tenant fits), else 1.
    """
    path = path or obj.tenants_path
    try:
        reading = read_tenants(path)
    except ConfigError as error:
        _refuse_file(str(path), [str(error)], as_json)
    if not reading.ok:
        _refuse_file(str(path), reading.messages(), as_json, str(reading.error()))
    tenants = reading.tenants
    if not as_json:
        click.echo(f"{path}: {len(tenants)} tenant(s) valid: {', '.join(tenants) or 'none'}")
    if not remote:
        if as_json:
            valid = {tenant_id: {"tenant": tenant_id, "ok": True} for tenant_id in tenants}
            click.echo(
                json.dumps({"file": str(path), "ok": True, "problems": [], "tenants": valid})
            )
        return
    reports = _remote_fit(obj, tenants, str(path))
    all_fit = all(not isinstance(report, str) and report.ok for report in reports.values())
    if as_json:
        document = {
            "file": str(path),
            "ok": all_fit,
            "problems": [],
            "tenants": {
                tenant_id: (
                    {"tenant": tenant_id, "ok": False, "error": report}
                    if isinstance(report, str)
                    else report.as_dict()
                )
                for tenant_id, report in reports.items()
            },
        }
        click.echo(json.dumps(document, default=str))
    else:
        _print_fit(reports)
    if not all_fit:
        raise SystemExit(1)


def _refuse_file(
    path: str, problems: list[str], as_json: bool, text: str | None = None
) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"file": path, "ok": False, "problems": problems, "tenants": {}}))
    else:
        click.echo(text or "\n".join(problems), err=True)
    raise SystemExit(1)


def _remote_fit(
    obj: CliContext, tenants: dict[str, TenantConfig], path: str
) -> dict[str, CheckReport | str]:
    """Each tenant's `check` report, or why it could not be checked at all (that tenant
    then does not fit, and the others are still checked)."""
    from connector.diagnostics.probe import check_config

    migrated_database(obj)  # the credentials live in the database
    reports: dict[str, CheckReport | str] = {}
    for tenant_id, config in tenants.items():
        try:
            reports[tenant_id] = check_config(obj.runtime, config, tenants_file=path)
        except ConnectorError as error:
            reports[tenant_id] = str(error)
    return reports


def _print_fit(reports: dict[str, CheckReport | str]) -> None:
    """One line per tenant (fits / does not fit), each problem with its fix below it."""
    for tenant_id, report in reports.items():
        if isinstance(report, str):
            click.echo(f"{tenant_id}: does not fit")
            click.echo(f"  could not be checked: {report}")
            continue
        click.echo(f"{tenant_id}: {'fits' if report.ok else 'does not fit'}")
        for system in report.systems:
            if not system.ok:
                click.echo(f"  {system.label} FAILED: {system.error}")
                click.echo(f"    fix: {system.fix}")
        for finding in report.fit.errors:
            click.echo(f"  {finding.subject}: {finding.message}")
            if finding.fix:
                click.echo(f"    fix: {finding.fix}")


@tenant.command("drop-backlog")
@click.argument("tenant_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def tenant_drop_backlog(obj: CliContext, tenant_id: str, yes: bool) -> None:
    """Drop the stored records (work items) of TENANT_ID, a tenant no longer in the tenants
    file, with one audit row saying how many. Without it they are kept: `status` lists them,
    and the dispatcher drops them after CONNECTOR_ABSENT_TENANT_BACKLOG_DAYS. Refused for a
    tenant in the file (its records are being released)."""
    from connector.dispatch.dispatcher import drop_backlog
    from connector.storage.work_items import WorkItems

    reading = read_tenants(obj.tenants_path)
    if tenant_id in reading.tenants or tenant_id in reading.problems:
        raise click.ClickException(
            f"tenant {tenant_id} is in {obj.tenants_path}: its stored records are its sync's "
            "work; remove it from the file first"
        )
    migrated_database(obj)
    with reported_errors():
        waiting, in_flight = WorkItems(obj.runtime.database).backlog(tenant_id)
        if not waiting + in_flight:
            click.echo(f"tenant {tenant_id} has no stored records")
            return
        if not yes:
            click.confirm(
                f"drop {waiting + in_flight} stored record(s) of {tenant_id}?", abort=True
            )
        count = drop_backlog(
            obj.runtime, tenant_id, "dropped by an operator (`tenant drop-backlog`)"
        )
    click.echo(
        f"dropped {count} stored record(s) of {tenant_id}; `ml-connector audit list "
        f"--tenant {tenant_id}` shows the row"
    )
