"""The console in a real headless Chromium over real HTTP, against Postgres, Redis, the
simulators and Celery workers: sign in, see a failed record, fix it, replay it, see it succeed."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests

from connector.polling import wait_until
from connector.storage.audit import IFS_TO_PIPEDRIVE, Attempt, AuditLog
from simulators.ifs.schema import customer_order
from tests.console.conftest import OPERATOR, SCREENSHOTS

pytestmark = pytest.mark.integration


def _failed_sync(stack_factory):
    stack = stack_factory()
    stack.ifs.seed(customers=3, orders=6, seed=1)
    bad = stack.ifs.keys(customer_order())[0]
    stack.ifs.edit_order(bad, CurrencyCode="EURO")  # Pipedrive answers 400 for this
    stack.start_workers(count=1, concurrency=2)
    synced = stack.cli("sync", stack.tenant, "--wait", "--json", "--timeout", "60")
    summary = json.loads(synced.stdout.strip().splitlines()[-1])
    assert synced.returncode == 2 and summary["failed"] == 1, synced.stderr + stack.worker_logs()
    (failed,) = AuditLog(stack.runtime.database).latest_failed(stack.tenant)
    assert failed.record_key == bad
    return stack, bad, failed


def _text(locator) -> str:
    from playwright.sync_api import Error

    # The page may be reloading itself right now: nothing to read until it is back.
    try:
        return str(locator.inner_text(timeout=2000))
    except Error:  # also Playwright's TimeoutError
        return ""


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_operator_signs_in_sees_the_failure_replays_it_after_the_fix_and_sees_success(
    stack_factory, console_factory, browser_page
) -> None:
    stack, bad, failed = _failed_sync(stack_factory)
    console = console_factory(stack)
    page = browser_page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{console.url}/tenants")
    assert page.locator("form.signin").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "sign-in.png"))
    name, password = OPERATOR
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("#tenants")
    assert page.inner_text("#user") == name
    row = page.locator(f"tr[data-tenant={stack.tenant}]")
    assert "1" in row.locator("td").nth(4).inner_text()
    # The sync's grants, booked by the workers' limiter in Redis, drawn as the day's usage.
    for system, unit in (("pipedrive", "tokens"), ("ifs", "requests")):
        chart = row.locator(f"figure[data-usage={system}]")
        assert chart.locator("svg rect").count() >= 2, chart.inner_html()  # background + bars
        assert f"{unit} in 24 h" in chart.locator("figcaption").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "tenants.png"), full_page=True)

    page.goto(f"{console.url}/runs")
    page.wait_for_selector("#runs")
    assert page.locator("#runs tr[data-run]").count() >= 1

    # A run still going: the page refreshes itself until the run is over, no click needed.
    live = uuid.uuid4().hex
    audit = AuditLog(stack.runtime.database)
    for key, summary in (("*", {"read": 2, "queued": 2}), ("LIVE-1", None)):
        operation = "plan" if key == "*" else "update"
        audit.write(
            Attempt(
                stack.tenant,
                IFS_TO_PIPEDRIVE,
                "order",
                key,
                operation=operation,
                response_summary=summary,
                correlation_id=live,
            )
        )
    page.goto(f"{console.url}/runs?tenant={stack.tenant}")
    state = page.locator(f"tr[data-run='{live}'] td.state")
    assert state.inner_text() == "running"
    page.screenshot(path=str(SCREENSHOTS / "runs.png"), full_page=True)
    audit.write(
        Attempt(
            stack.tenant,
            IFS_TO_PIPEDRIVE,
            "order",
            "LIVE-2",
            operation="update",
            correlation_id=live,
        )
    )
    assert wait_until(lambda: _text(state) == "finished", timeout=30), page.content()
    assert page.locator("meta[http-equiv=refresh]").count() == 0  # over: no more refreshes

    page.goto(f"{console.url}/failures")
    # The session's database holds other tests' tenants too: this tenant's row only.
    mine = f"tr[data-tenant='{stack.tenant}'][data-record='{bad}']"
    record = page.locator(mine)
    assert record.is_visible()
    assert "Currency must be a 3-letter code" in page.inner_text(f"section.group:has({mine}) pre")
    page.screenshot(path=str(SCREENSHOTS / "failures.png"), full_page=True)

    stack.ifs.edit_order(bad, CurrencyCode="EUR")  # the fix, at the source
    record.locator("a.replay-one").click()
    page.wait_for_selector("#confirm-replay")
    assert bad in page.content()
    page.screenshot(path=str(SCREENSHOTS / "confirm-replay.png"), full_page=True)
    page.click("#confirm-replay")
    page.wait_for_selector("#replays")

    def outcome() -> str:
        page.reload()
        return page.inner_text(f"tr[data-audit='{failed.id}'] td.outcome")

    assert wait_until(lambda: outcome() == "succeeded", timeout=60), (
        page.content() + stack.worker_logs()
    )
    assert name in page.inner_text(f"tr[data-audit='{failed.id}']")
    page.screenshot(path=str(SCREENSHOTS / "replays.png"), full_page=True)

    replayed = AuditLog(stack.runtime.database).get(failed.id)
    assert replayed is not None and replayed.status == "replayed"
    assert replayed.replayed_by == name
    assert AuditLog(stack.runtime.database).latest_failed(stack.tenant) == []

    page.goto(f"{console.url}/records/{stack.tenant}/order/{bad}")
    page.wait_for_selector("#attempts")
    statuses = page.locator("#attempts tr[data-status]").evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses[-2:] == ["replayed", "succeeded"], statuses
    assert (
        page.locator("#pipedrive-link")
        .get_attribute("href", timeout=5000)
        .endswith("/deal/" + page.inner_text("#pipedrive-link"))
    )
    page.screenshot(path=str(SCREENSHOTS / "record.png"), full_page=True)

    page.goto(f"{console.url}/webhooks")
    page.wait_for_selector("#webhook-events")
    page.screenshot(path=str(SCREENSHOTS / "webhooks.png"), full_page=True)

    # Other tests' tenants share the session's database: this tenant's failures are gone.
    page.goto(f"{console.url}/failures?tenant={stack.tenant}")
    assert page.locator("#no-failures").is_visible()


def test_unauthenticated_requests_get_401_and_posts_need_the_csrf_token(
    stack_factory, console_factory
) -> None:
    stack, _, failed = _failed_sync(stack_factory)
    console = console_factory(stack)

    for path in ("/tenants", "/runs", "/failures", "/webhooks", f"/records/{stack.tenant}/order/x"):
        answer = requests.get(console.url + path, timeout=10, allow_redirects=False)
        assert answer.status_code == 401, path
        assert "Sign in" in answer.text and failed.record_key not in answer.text
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"

    browser = requests.Session()
    token = _csrf(browser.get(f"{console.url}/sign-in", timeout=10).text)
    name, password = OPERATOR
    wrong = browser.post(
        f"{console.url}/sign-in",
        data={"username": name, "password": "wrong", "csrf_token": token},
        timeout=10,
    )
    assert wrong.status_code == 401
    no_token = browser.post(
        f"{console.url}/sign-in", data={"username": name, "password": password}, timeout=10
    )
    assert no_token.status_code == 403
    signed_in = browser.post(
        f"{console.url}/sign-in",
        data={"username": name, "password": password, "csrf_token": token},
        timeout=10,
    )
    assert signed_in.status_code == 200 and 'id="tenants"' in signed_in.text

    replay = {"scope": "record", "audit_id": str(failed.id)}
    refused = browser.post(f"{console.url}/replay", data=replay, timeout=10)
    assert refused.status_code == 403
    forged = browser.post(
        f"{console.url}/replay", data={**replay, "csrf_token": "forged"}, timeout=10
    )
    assert forged.status_code == 403
    assert AuditLog(stack.runtime.database).get(failed.id).status == "failed"  # type: ignore[union-attr]

    # Signed in now: every page renders, and none shows a secret of the tenant or the process.
    secrets = [
        stack.env["CONNECTOR_ENCRYPTION_KEYS"],
        stack.runtime.vault.get(stack.tenant, "pipedrive", "api_token"),
        stack.runtime.vault.get(stack.tenant, "ifs", "client_secret"),
        console.env["CONNECTOR_CONSOLE_USERS"].split(":", 1)[1],
    ]
    for path in (
        "/tenants",
        "/runs",
        "/failures",
        "/webhooks",
        f"/records/{stack.tenant}/order/{failed.record_key}",
        f"/replay?scope=tenant&tenant={stack.tenant}",
    ):
        page = browser.get(console.url + path, timeout=10)
        assert page.status_code == 200, (path, page.text)
        for secret in secrets:
            assert secret not in page.text, path


def test_a_trusted_proxy_header_signs_the_operator_in(stack_factory, console_factory) -> None:
    stack = stack_factory()
    console = console_factory(
        stack, CONNECTOR_CONSOLE_USERS="", CONNECTOR_CONSOLE_TRUSTED_HEADER="X-Forwarded-User"
    )
    assert requests.get(f"{console.url}/tenants", timeout=10).status_code == 401
    answer = requests.get(
        f"{console.url}/tenants", headers={"X-Forwarded-User": "bob@example.com"}, timeout=10
    )
    assert answer.status_code == 200 and "bob@example.com" in answer.text
