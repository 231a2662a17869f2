"""Real `celery worker` processes on the sandbox's queue: the one worker command line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from connector.polling import wait_until

BIN = Path(sys.executable).parent


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (a prefork worker's pool processes)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(part) for part in text.split()]


def queues_of(env: dict[str, str]) -> tuple[str, str]:
    """(bulk, interactive) queue names that processes started with `env` use."""
    bulk = env["CONNECTOR_QUEUE"]
    return bulk, env.get("CONNECTOR_INTERACTIVE_QUEUE") or f"{bulk}-interactive"


class WorkerProcesses:
    """Celery workers started with `env`, each logging to a file in `logs`."""

    def __init__(self, env: dict[str, str], logs: Path, name: str) -> None:
        self.env, self.logs, self.name = env, logs, name
        self.processes: list[subprocess.Popen[bytes]] = []
        # Workers started so far, stopped ones too: a new one never overwrites an old log.
        self._started = 0

    def start(
        self,
        count: int,
        concurrency: int,
        queue: str | None = None,
        include: tuple[str, ...] = (),
    ) -> list[subprocess.Popen[bytes]]:
        """`count` workers of `concurrency` processes consuming `queue` (comma-separated
        names), by default both the bulk and the interactive queue of the env's settings.
        Each also runs a dispatcher thread (one of them ticks at a time). `include`: more
        task modules for the workers to import (a benchmark's own)."""
        queues = queue or ",".join(queues_of(self.env))
        started = []
        for _ in range(count):
            number, self._started = self._started, self._started + 1
            log = open(self.logs / f"worker{number}.log", "wb")  # noqa: SIM115 - owned by the child
            argv = [
                *(str(BIN / "celery"), "-A", "workers.app:celery_app", "worker"),
                *("-Q", queues, "-c", str(concurrency)),
                *("-n", f"w{number}-{self.name}@%h", "-l", "WARNING"),
                # Each worker works alone: no cluster chatter to wait for at start or stop.
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                *(("-I", ",".join(include)) if include else ()),
            ]
            process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            started.append(process)
        return started

    def wait_for_pool(self, process: subprocess.Popen[bytes], size: int, timeout: float) -> None:
        """Wait until a prefork worker has forked its `size` pool processes."""
        ready = wait_until(
            lambda: process.poll() is not None or len(child_pids(process.pid)) >= size,
            timeout=timeout,
            interval=0.1,
        )
        if not ready or process.poll() is not None:
            raise RuntimeError("worker did not start:\n" + self.logs_tail())

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown: running tasks finish), then kill what hangs."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def logs_tail(self, tail: int = 5000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in self.logs.glob("*.log"))
