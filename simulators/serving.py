"""Serve a simulator's WSGI app on a real socket in a background thread."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from types import TracebackType
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

IDLE_TIMEOUT_S = 60.0
"""How long a kept-alive connection may wait for its next request (real servers close idle
connections too; urllib3 sees the close before it reuses the connection)."""


class _KeepAliveServer(ThreadedWSGIServer):
    """Werkzeug's threaded server, remembering its open connections so that stopping it
    closes them: a stopped simulator must not go on answering on kept-alive connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[socket.socket] = set()
        self.open_connections_lock = threading.Lock()

    def close_open_connections(self) -> None:
        with self.open_connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, as Pipedrive and IFS Cloud serve it.

    Werkzeug closes every connection because http.server cannot skip the part of a request
    body the application did not read before the next request line. Here the body (of known
    Content-Length) is read in full before the application runs and handed to it from
    memory, so the connection is positioned at the next request whatever the application
    read; a chunked request body still closes the connection.
    """

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server: _KeepAliveServer

    def setup(self) -> None:
        super().setup()
        # The status line and headers and then the body go out in separate writes; on a kept-
        # alive connection Nagle's algorithm would hold the body until the client's delayed
        # ACK (~40 ms). Closing the connection used to flush it.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.open_connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.open_connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def run_wsgi(self) -> None:
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            length = -1
        if chunked or length < 0:
            self.close_connection = True
            super().run_wsgi()
            return
        connection_input = self.rfile
        body = connection_input.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        # Werkzeug reads the body from self.rfile and, after the response, drains what is
        # left of it there: both see only this request's body.
        self.rfile = io.BytesIO(body)
        try:
            super().run_wsgi()
        finally:
            self.rfile = connection_input

    def send_header(self, keyword: str, value: str) -> None:
        # Werkzeug always adds "Connection: close"; keep the connection unless this request
        # asked to close it (or is HTTP/1.0, which http.server already handled).
        if (
            keyword.lower() == "connection"
            and value.lower() == "close"
            and not self.close_connection
        ):
            return
        super().send_header(keyword, value)

    # One log line per request drowns test output and slows the simulators down.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class RunningServer:
    """A threaded HTTP/1.1 server (keep-alive) on 127.0.0.1; port 0 picks a free port.

    Used by tests, benchmarks and the demo so that every client talks real HTTP.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server = _KeepAliveServer(host, port, app, handler=_KeepAliveHandler)
        self.host = host
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"sim-{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RunningServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for a server whose URL must be known before it
    is built, such as a webhook receiver named in its own configuration)."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
