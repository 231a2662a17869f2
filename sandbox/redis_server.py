"""A private redis-server on a free port, which a test may restart (the machine's Redis is
shared with others and is never restarted)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from connector.polling import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """redis-server without persistence (no RDB, no AOF): a restart loses every key, as a
    production Redis without persistence does. Use as a context manager."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        log = open(self.folder / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not wait_until(self._answers, timeout=20, interval=0.05):
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # no shutdown save: whatever it held is gone
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port: every queued message and key is lost."""
        self.stop()
        self.start()

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False
