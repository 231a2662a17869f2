"""No secret (API token, client secret, webhook password, encryption key) ever reaches a log
line or an audit row, through a whole sync and stage push with failures on the way."""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import select

from connector.polling import wait_until
from connector.storage.models import AuditRecord
from simulators.ifs.schema import customer_order

pytestmark = pytest.mark.integration


def test_secrets_stay_out_of_logs_and_audit_rows(stack_factory) -> None:
    stack = stack_factory()
    stack.env["CONNECTOR_LOG_LEVEL"] = "DEBUG"
    stack.ifs.seed(customers=3, orders=8, seed=3)
    broken = stack.ifs.keys(customer_order())[0]
    stack.ifs.edit_order(broken, CurrencyCode="EURO")
    stack.pipedrive.set_faults({"error_rate": 0.1, "force_429": 3, "seed": 2})
    stack.runtime.vault.set(stack.tenant, "webhook", "basic_user", "hook-user-0451")
    stack.runtime.vault.set(stack.tenant, "webhook", "basic_password", "hook-pass-S3cr3t-77")
    stack.start_workers(count=1, concurrency=2)

    result = stack.cli("sync", stack.tenant, "--wait", "--json")
    assert result.returncode in (0, 2), result.stderr
    # A wrong password at the receiver is logged as a rejection; the secret must not be.
    from simulators.serving import RunningServer
    from webhook_receiver.app import create_app

    app = create_app(
        runtime=stack.runtime, enqueue=lambda name, kwargs: None, check_broker=lambda: None
    )
    with RunningServer(app) as receiver:
        refused = requests.post(
            f"{receiver.url}/webhooks/pipedrive/{stack.tenant}",
            data=b"{}",
            auth=("hook-user-0451", "not-the-password"),
            timeout=10,
        )
    assert refused.status_code == 401
    stack.pipedrive.revoke_api_token(stack.pipedrive.settings.api_tokens[0])
    stack.ifs.edit_order(stack.ifs.keys(customer_order())[1], Cf_Cost_Center="CC-LEAK")
    stack.cli("sync", stack.tenant, "--wait", "--json")
    stack.stop_workers()

    secrets = {
        "pipedrive api token": stack.pipedrive.settings.api_tokens[0],
        "ifs client secret": next(iter(stack.ifs.settings.clients.values())),
        "webhook password": "hook-pass-S3cr3t-77",
        "encryption key": stack.env["CONNECTOR_ENCRYPTION_KEYS"],
    }
    logs = stack.worker_logs() + result.stdout + result.stderr
    assert "pipedrive" in logs.lower() or "task" in logs.lower()  # the logs are not empty
    with stack.runtime.database.session() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.tenant == stack.tenant))
        audit = json.dumps(
            [{c.name: getattr(row, c.name) for c in AuditRecord.__table__.columns} for row in rows],
            default=str,
        )
    assert wait_until(lambda: "failed" in audit, 1)
    for name, secret in secrets.items():
        assert secret not in logs, f"{name} appears in the logs"
        assert secret not in audit, f"{name} appears in an audit row"
