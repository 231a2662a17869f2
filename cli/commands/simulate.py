"""`ml-connector simulate ifs|pipedrive`: run a simulator as a real HTTP server."""

from __future__ import annotations

import click


@click.group()
def simulate() -> None:
    """Run a local IFS Cloud or Pipedrive simulator (for demos, tests and evaluation)."""


@simulate.command("ifs")
@click.option("--port", type=int, default=8081, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def simulate_ifs(port: int, host: str) -> None:
    """Serve the IFS Cloud simulator (OData projections, OAuth2, ETags)."""
    from simulators.ifs.app import serve

    serve(port=port, host=host)


@simulate.command("pipedrive")
@click.option("--port", type=int, default=8082, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def simulate_pipedrive(port: int, host: str) -> None:
    """Serve the Pipedrive simulator (API v1/v2, OAuth2, rate limits, webhooks)."""
    from simulators.pipedrive.app import serve

    serve(port=port, host=host)
