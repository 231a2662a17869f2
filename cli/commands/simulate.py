"""`ml-connector simulate ifs|pipedrive`: run a simulator as a real HTTP server."""

from __future__ import annotations

import click


@click.group()
def simulate() -> None:
    """Run a local IFS Cloud or Pipedrive simulator (for demos, tests and evaluation)."""


@simulate.command("ifs")
@click.option("--port", type=int, default=8081, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--customers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seed this many customers at start.",
)
@click.option(
    "--orders",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seed this many sales orders at start (needs customers).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the data.")
def simulate_ifs(port: int, host: str, customers: int, orders: int, seed: int) -> None:
    """Serve the IFS Cloud simulator (OData projections, OAuth2, ETags).

    Realm `ifsdemo`, client `ml-connector` with secret `sim-ifs-secret`; control endpoints
    under /_sim/ (see simulators/ifs/README.md).
    """
    from simulators.ifs.app import serve
    from simulators.ifs.settings import IfsSimSettings

    if orders and not customers:
        raise click.BadParameter("orders need at least one customer", param_hint="--orders")
    settings = IfsSimSettings(seed_customers=customers, seed_orders=orders, seed=seed)
    click.echo(
        f"IFS Cloud simulator on http://{host}:{port} ({customers} customers, {orders} orders)",
        err=True,
    )
    serve(port=port, settings=settings, host=host)


@simulate.command("pipedrive")
@click.option("--port", type=int, default=8082, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def simulate_pipedrive(port: int, host: str) -> None:
    """Serve the Pipedrive simulator (API v1/v2, OAuth2, rate limits, webhooks).

    API token `sim-pipedrive-token`; control endpoints under /_sim/ (see
    simulators/pipedrive/README.md).
    """
    from simulators.pipedrive.app import serve

    click.echo(f"Pipedrive simulator on http://{host}:{port}", err=True)
    serve(port=port, host=host)
