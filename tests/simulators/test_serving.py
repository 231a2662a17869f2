"""The simulators' HTTP server: keep-alive as the real remotes serve it, and a stopped
simulator that really stops answering."""

from __future__ import annotations

import pytest
import requests
from flask import Flask, request

from simulators.serving import RunningServer


def _app() -> tuple[Flask, set[int]]:
    app = Flask("serving-test")
    client_ports: set[int] = set()

    @app.post("/deals")
    def create() -> tuple[dict[str, int], int]:
        client_ports.add(request.environ["REMOTE_PORT"])
        if request.args.get("refuse"):
            # Answers without reading the body: the next request must still parse.
            return {"error": 1}, 401
        return {"items": len(request.get_json()["items"])}, 201

    return app, client_ports


def test_one_connection_serves_many_requests_whatever_the_app_read() -> None:
    app, client_ports = _app()
    with RunningServer(app) as server, requests.Session() as session:
        for number in range(20):
            refuse = "?refuse=1" if number % 3 == 0 else ""
            response = session.post(f"{server.url}/deals{refuse}", json={"items": [1] * number})
            if refuse:
                assert response.status_code == 401
            else:
                assert response.status_code == 201
                assert response.json() == {"items": number}
            assert response.headers.get("Connection") != "close"
    assert len(client_ports) == 1


def test_a_request_asking_to_close_is_answered_with_close() -> None:
    app, client_ports = _app()
    with RunningServer(app) as server, requests.Session() as session:
        for _ in range(3):
            response = session.post(
                f"{server.url}/deals", json={"items": []}, headers={"Connection": "close"}
            )
            assert response.headers.get("Connection") == "close"
    assert len(client_ports) == 3


def test_a_stopped_simulator_closes_its_kept_alive_connections() -> None:
    app, client_ports = _app()
    server = RunningServer(app).start()
    port = server.port
    with requests.Session() as session:
        assert session.post(f"{server.url}/deals", json={"items": [1]}).status_code == 201
        server.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(f"http://127.0.0.1:{port}/deals", json={"items": [1]}, timeout=5)
        # Started again on the same port, the same client session reaches the new server.
        with RunningServer(app, port=port) as again:
            assert session.post(f"{again.url}/deals", json={"items": [1, 2]}).json() == {"items": 2}
    assert len(client_ports) == 2
