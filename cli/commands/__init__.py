"""All command groups of `ml-connector`, in the order `--help` lists them."""

from __future__ import annotations

import click

from cli.commands.audit import audit, replay
from cli.commands.check import check
from cli.commands.console import console
from cli.commands.credentials import credentials
from cli.commands.db import db
from cli.commands.demo import demo
from cli.commands.keys import keys
from cli.commands.reconcile import reconcile
from cli.commands.relink import relink
from cli.commands.simulate import simulate
from cli.commands.status import status
from cli.commands.sync import sync
from cli.commands.tenant import tenant
from cli.commands.webhooks import webhooks

ALL: list[click.Command] = [
    demo,
    sync,
    check,
    status,
    audit,
    replay,
    relink,
    reconcile,
    tenant,
    credentials,
    keys,
    db,
    webhooks,
    console,
    simulate,
]
