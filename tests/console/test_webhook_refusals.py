"""The console shows refused webhook deliveries: listed on the webhook page, counted per tenant."""

from __future__ import annotations

import yaml

from connector.runtime import Runtime
from connector.settings import Settings
from connector.storage.webhook_refusals import Refusal, WebhookRefusals
from console.app import create_app
from tests.connector.webhooks.support import KEY, tenant_body, unique_tenant

HEADER = "X-Forwarded-User"


def test_refusals_are_listed_on_the_webhook_page_and_counted_on_the_tenants_page(
    postgres_url, tmp_path
):
    tenant = unique_tenant("refused")
    tenants_file = tmp_path / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump({"tenants": {tenant: tenant_body()}}))
    settings = Settings(
        database_url=postgres_url,
        encryption_keys=KEY,
        tenants_file=tenants_file,
        redis_url=None,
        console_trusted_header=HEADER,
    )
    runtime = Runtime(settings)
    refusals = WebhookRefusals(runtime.database)
    refusals.record(Refusal(tenant, "bad_auth", 401, "203.0.113.5"))
    refusals.record(Refusal(tenant, "bad_payload", 400, "203.0.113.6"))
    refusals.record(Refusal(None, "unknown_tenant", 401, "198.51.100.1"))
    client = create_app(runtime, enqueue=lambda name, kwargs: None).test_client()
    try:
        mine = client.get(f"/webhooks?tenant={tenant}", headers={HEADER: "ops"})
        everyone = client.get("/webhooks", headers={HEADER: "ops"})
        tenants = client.get("/tenants", headers={HEADER: "ops"})
    finally:
        runtime.close()

    page = mine.get_data(as_text=True)
    assert mine.status_code == 200
    assert 'data-reason="bad_auth"' in page and "203.0.113.5" in page
    assert 'data-reason="bad_payload"' in page and "unknown_tenant" not in page
    assert "(unknown tenant)" in everyone.get_data(as_text=True)
    row = tenants.get_data(as_text=True).split(f'data-tenant="{tenant}"')[1].split("</tr>")[0]
    assert 'refused (24 h): <span class="bad">2</span>' in row
