"""The worker process's one connector Runtime, built on first use (or shared by the embedded
setup, whose worker threads use the runtime of the command that started them).

The runtime a worker builds itself is live (Runtime.go_live): it follows the tenants file
and the vault, and every task checks for changes first (workers/base.py)."""

from __future__ import annotations

import threading

from connector.runtime import Runtime
from connector.settings import get_settings

_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
            _runtime.go_live()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Use `runtime` in this process (the embedded demo shares its own with the worker)."""
    global _runtime
    with _lock:
        _runtime = runtime
