"""The dispatcher thread of a worker's main process (connector.dispatch does the work).

Each worker runs one; the deployment's lease lets one of them tick at a time, and another
takes over within seconds of its holder's death, so no role has to be added or kept single.
It builds a Runtime of its own rather than the process-wide one: prefork children forked
later (a replaced pool process) must not inherit a runtime whose connections it uses.
"""

from __future__ import annotations

import logging
import threading

from connector.dispatch.dispatcher import Dispatcher
from connector.runtime import Runtime
from connector.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_running: tuple[threading.Thread, threading.Event, Runtime | None] | None = None


def start_dispatcher(runtime: Runtime | None = None) -> None:
    """Start this process's dispatcher thread (once); with `runtime`, it shares that one."""
    from workers.app import enqueue

    global _running
    with _lock:
        if _running is not None:
            return
        own = None
        if runtime is None:
            own = runtime = Runtime(get_settings())
            runtime.go_live()
        stop = threading.Event()
        dispatcher = Dispatcher(runtime, enqueue)
        thread = threading.Thread(
            target=dispatcher.run, args=(stop,), name="mlc-dispatcher", daemon=True
        )
        thread.start()
        _running = (thread, stop, own)


def stop_dispatcher(timeout_s: float = 10.0) -> None:
    """Stop the thread (it drops the lease, so another worker takes over at once)."""
    global _running
    with _lock:
        running, _running = _running, None
    if running is None:
        return
    thread, stop, own = running
    stop.set()
    thread.join(timeout_s)
    if own is not None:
        own.close()
