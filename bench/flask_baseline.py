"""The trivial Flask endpoint the receiver is measured against (`bench.receiver`).

It does what any Flask JSON endpoint does and nothing of the receiver's own work: read the
body, answer a small JSON object. Served by the same gunicorn settings as the receiver.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/pipedrive/<tenant_id>")
def receive(tenant_id: str) -> tuple[Response, int]:
    request.get_data()
    return jsonify({"status": "accepted", "tenant": tenant_id}), 200
