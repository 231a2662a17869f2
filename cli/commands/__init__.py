"""All command groups of `ml-connector`, in the order `--help` lists them."""

from __future__ import annotations

import click

from cli.commands.simulate import simulate

ALL: list[click.Command] = [simulate]
