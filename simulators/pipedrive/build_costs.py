"""Build token_costs.json (operation -> x-token-cost) from the official Pipedrive OpenAPI specs.

Run once when the specs change: `python -m simulators.pipedrive.build_costs [SPEC_DIR]`.
The simulator loads the small JSON at start-up instead of parsing 2.8 MB of YAML.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SPEC_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "specs" / "pipedrive"
OUTPUT = Path(__file__).with_name("token_costs.json")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def costs_of(spec: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Map spec path -> method -> token cost for every operation that declares one."""
    table: dict[str, dict[str, int]] = {}
    for path, item in sorted(spec["paths"].items()):
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation and "x-token-cost" in operation:
                table.setdefault(path, {})[method.upper()] = int(operation["x-token-cost"])
    return table


def build(spec_dir: Path) -> dict[str, dict[str, dict[str, int]]]:
    table = {}
    for version in ("v1", "v2"):
        with (spec_dir / f"openapi-{version}.yaml").open() as handle:
            spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        table[version] = costs_of(spec)
    return table


def main() -> None:
    spec_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC_DIR
    OUTPUT.write_text(json.dumps(build(spec_dir), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
