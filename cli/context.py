"""What every command shares: settings, the tenants file path, and a lazily built runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from connector.errors import ConnectorError
from connector.settings import Settings

if TYPE_CHECKING:
    from connector.runtime import Runtime


@dataclass
class CliContext:
    settings: Settings
    tenants_path: Path
    _runtime: Runtime | None = field(default=None, repr=False)

    @property
    def runtime(self) -> Runtime:
        """The connector runtime; config errors become clean click errors."""
        if self._runtime is None:
            from connector.runtime import Runtime

            try:
                self._runtime = Runtime(self.settings, tenants_path=self.tenants_path)
            except ConnectorError as error:
                raise click.ClickException(str(error)) from error
        return self._runtime


pass_context = click.make_pass_decorator(CliContext)
