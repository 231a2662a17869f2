"""The sandbox tenant: its tenants-file section pointing at the simulators, and its credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from connector.storage.vault import Vault
from sandbox.simulators import Simulators


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, section by section (nested dicts merge too)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def tenant_config(simulators: Simulators, overrides: dict[str, Any]) -> dict[str, Any]:
    """A tenant's section that talks to `simulators`, with `overrides` (limits, mappings…)."""
    ifs = simulators.ifs.settings
    base = {
        "ifs": {
            "base_url": simulators.ifs_url,
            "namespace": ifs.namespace,
            "client_id": next(iter(ifs.clients)),
        },
        "pipedrive": {
            "api_domain": simulators.pipedrive_url,
            "integration_user_id": simulators.pipedrive.settings.integration_user_id,
        },
    }
    return merge(base, overrides)


def write_tenants_file(
    path: Path, tenant: str, config: dict[str, Any], others: dict[str, dict[str, Any]] | None = None
) -> None:
    """The tenants file of `tenant`, and of the `others` the same deployment serves."""
    tenants = {tenant: config, **(others or {})}
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))


def store_credentials(vault: Vault, tenant: str, simulators: Simulators) -> None:
    """The IFS client secret and Pipedrive API token the simulators accept, in the vault."""
    ifs = simulators.ifs.settings
    vault.set(tenant, "ifs", "client_secret", next(iter(ifs.clients.values())))
    vault.set(tenant, "pipedrive", "api_token", simulators.pipedrive.settings.api_tokens[0])
