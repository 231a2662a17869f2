"""A private redis-server on a free port, which a test may restart (the machine's Redis is
shared with others and is never restarted)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Literal

from connector.polling import wait_until

Persistence = Literal["none", "aof"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """redis-server with the persistence of a production setup. Use as a context manager.

    "none" (no RDB, no AOF): a restart loses every key. "aof": the append-only file synced
    every second (`appendfsync everysec`, the usual production choice) and no RDB; a restart
    (a crash: SIGKILL) replays the file, so it keeps everything but the writes of about the
    last second.
    """

    def __init__(self, folder: Path, persistence: Persistence = "none") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary, self.persistence = binary, persistence
        self.port = free_port()
        # Its own folder: the AOF files of two servers of one test never mix.
        self.folder = folder / f"redis-{self.port}"
        self.folder.mkdir(parents=True, exist_ok=True)
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
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child's
        aof = ("--appendonly", "yes", "--appendfsync", "everysec")
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--dir", str(self.folder)),
                *(aof if self.persistence == "aof" else ("--appendonly", "no")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Answering PING is not enough after a restart: with AOF it answers LOADING until
        # the file is replayed.
        if not wait_until(self._serves, timeout=20, interval=0.05):
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # a crash: no shutdown save, no last fsync
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Crash and start again on the same port: without persistence every queued message
        and key is lost; with AOF what was synced to the file is back."""
        self.stop()
        self.start()

    def keys(self) -> int:
        """How many keys it holds (a test shows what a restart kept)."""
        import redis

        return int(redis.Redis(port=self.port).dbsize())

    def _serves(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            return bool(client.ping()) and client.dbsize() >= 0
        except redis.RedisError:  # not listening yet, or LOADING the AOF
            return False
