"""`ml-connector tenant list|show|validate`: inspect and check the tenants file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from cli.commands.credentials import as_utc
from cli.commands.db import migrated_database, reported_errors
from cli.context import CliContext, pass_context
from connector.errors import ConfigError
from connector.storage.vault import required_credentials
from connector.tenants import TenantConfig, load_tenants


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
@pass_context
def tenant_validate(obj: CliContext, path: Path | None, remote: bool) -> None:
    """Check a tenants file (PATH, default the --tenants file) and print each problem.

    With --remote, also reach every tenant's IFS and Pipedrive as `ml-connector check`
    does and report whether its configuration fits them; exit 1 when one does not.
    """
    path = path or obj.tenants_path
    try:
        tenants = load_tenants(path)
    except ConfigError as error:
        click.echo(str(error), err=True)
        raise SystemExit(1) from error
    click.echo(f"{path}: {len(tenants)} tenant(s) valid: {', '.join(tenants) or 'none'}")
    if remote and not _remote_fit(obj, tenants, str(path)):
        raise SystemExit(1)


def _remote_fit(obj: CliContext, tenants: dict[str, TenantConfig], path: str) -> bool:
    """One line per tenant (fits / does not fit), each problem with its fix below it."""
    from connector.diagnostics.probe import check_config

    migrated_database(obj)  # the credentials live in the database
    all_fit = True
    for tenant_id, config in tenants.items():
        with reported_errors():
            report = check_config(obj.runtime, config, tenants_file=path)
        all_fit = all_fit and report.ok
        click.echo(f"{tenant_id}: {'fits' if report.ok else 'does not fit'}")
        for system in report.systems:
            if not system.ok:
                click.echo(f"  {system.label} FAILED: {system.error}")
                click.echo(f"    fix: {system.fix}")
        for finding in report.fit.errors:
            click.echo(f"  {finding.subject}: {finding.message}")
            if finding.fix:
                click.echo(f"    fix: {finding.fix}")
    return all_fit
