"""`ml-connector demo`: the whole product on an embedded default, in one command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.option("--customers", type=click.IntRange(1, 5000), default=25, show_default=True)
@click.option("--orders", type=click.IntRange(4, 20000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only one JSON object of counts.")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo's database and tenants file go (emptied first).",
)
def demo(customers: int, orders: int, as_json: bool, folder: Path) -> None:
    """Run the whole story with nothing else running: simulated IFS Cloud and Pipedrive,
    an embedded database, worker and webhook receiver.

    IFS customers and orders become Pipedrive organizations and deals with GL dimensions;
    a simulated sales user moves deals (one to won) and the webhooks change the IFS orders
    with ETags; an injected failure shows up in the audit log and is replayed.
    """
    from cli.demo import Story

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    story = Story(customers, orders, folder, say, bars=not as_json)
    with story.running():
        result = story.run()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo(
        f"\nDone in {result.seconds:.1f}s: {result.organizations_created} organizations and "
        f"{result.deals_created} deals created, {result.stage_changes_pushed} stage changes "
        f"pushed, {result.ifs_orders_updated} IFS orders updated, {result.replayed} replayed, "
        f"{result.failed} failed. Requests: "
        + ", ".join(f"{k} {v}" for k, v in result.requests.items())
    )
    command = sys.argv[0] if sys.argv and sys.argv[0].endswith("ml-connector") else "ml-connector"
    click.echo(
        f"Explore it: CONNECTOR_DATABASE_URL=sqlite:///{folder}/connector.db "
        f"{command} --tenants {folder}/tenants.yaml audit list"
    )
