"""Console fixtures: the console served by a real gunicorn process, and a headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.security import generate_password_hash

from sandbox.stack import Stack
from sandbox.workers import BIN
from simulators.serving import free_port
from tests.fixtures.processes import ProcessTree, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium in a container: no sandbox (no user namespaces), nothing that phones home.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR = ("alice", "correct horse battery staple")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


@dataclass
class RunningConsole:
    url: str
    process: ProcessTree
    env: dict[str, str]


@pytest.fixture
def console_factory(tmp_path: Path) -> Iterator[Callable[[Stack], RunningConsole]]:
    """Start `gunicorn console.wsgi:app` with the stack's settings and one operator."""
    trees: list[ProcessTree] = []

    def start(stack: Stack, **extra_env: str) -> RunningConsole:
        port = free_port()
        name, password = OPERATOR
        env = {
            **stack.env,
            "CONNECTOR_CONSOLE_USERS": f"{name}:{generate_password_hash(password)}",
            **extra_env,
        }
        argv = [
            str(BIN / "gunicorn"),
            "--no-control-socket",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "console.wsgi:app",
        ]
        tree = ProcessTree(argv, env, tmp_path / f"console-{port}.log")
        tree.__enter__()
        trees.append(tree)
        url = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{url}/healthz", timeout=60), tree.log()
        return RunningConsole(url, tree, env)

    yield start
    for tree in trees:
        tree.__exit__(None, None, None)


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        return "Debian's chromium is missing (apt-get install -y chromium; .ci/run does)"
    return None


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[object]:
    """A page of a headless Chromium with a fresh profile."""
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
