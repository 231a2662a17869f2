"""The worker process's one connector Runtime, built on first use (or shared by the embedded
setup, whose worker threads use the runtime of the command that started them).

The runtime a worker builds itself is live (Runtime.go_live): it follows the tenants file
and the vault, every task checks for changes first (workers/base.py), and a timer checks
too, so an idle process follows them and reports a broken file (connector.live_config)."""

from __future__ import annotations

import threading

from connector.runtime import Runtime
from connector.settings import get_settings

_lock = threading.Lock()
_runtime: Runtime | None = None
# The runtime was built by get_runtime (close_runtime closes it), not given by set_runtime.
_built = False


def get_runtime(role: str = "worker") -> Runtime:
    """This process's runtime; the first call builds it live for `role` (worker, beat),
    checking the configuration on a timer too and publishing each check."""
    global _runtime, _built
    with _lock:
        if _runtime is None:
            _runtime, _built = Runtime(get_settings()), True
            live = _runtime.go_live(role=role)
            if live is not None:
                live.watch()
        return _runtime


def close_runtime() -> None:
    """Close and forget the runtime `get_runtime` built (its watcher thread ends); a runtime
    given with `set_runtime` is its giver's to close, and is only forgotten."""
    global _runtime, _built
    with _lock:
        runtime, built, _runtime, _built = _runtime, _built, None, False
    if runtime is not None and built:
        runtime.close()


def set_runtime(runtime: Runtime | None) -> None:
    """Use `runtime` in this process (the embedded demo shares its own with the worker)."""
    global _runtime, _built
    with _lock:
        _runtime, _built = runtime, False
