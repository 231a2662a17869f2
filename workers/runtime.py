"""One connector Runtime per worker process, built on first use."""

from __future__ import annotations

import threading

from connector.runtime import Runtime
from connector.settings import get_settings
from connector.sync.engine import TenantSync

_lock = threading.Lock()
_runtime: Runtime | None = None
_syncs: dict[str, TenantSync] = {}


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Use `runtime` in this process (the embedded demo shares its own with the worker)."""
    global _runtime
    with _lock:
        _runtime = runtime
        _syncs.clear()


def tenant_sync(tenant_id: str) -> TenantSync:
    """The process's TenantSync for one tenant (clients, token caches and layout reused)."""
    runtime = get_runtime()
    with _lock:
        sync = _syncs.get(tenant_id)
    if sync is None:
        sync = TenantSync(runtime, tenant_id)
        with _lock:
            sync = _syncs.setdefault(tenant_id, sync)
    return sync
