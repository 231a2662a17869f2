"""The shape check: every delivery the Pipedrive simulator sends passes, wrong types do not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.webhooks.events import PayloadError, parse_body
from connector.webhooks.shape import MAX_DEPTH, _tree_is_plain, check_shape, decode
from simulators.pipedrive.state import PipedriveSim
from tests.connector.webhooks.support import encode, malformed_variants, v2_deal_event


def simulator_deliveries() -> list[dict[str, Any]]:
    """What the simulator would send for creates, changes, deletes and merges, v1 and v2."""
    sim = PipedriveSim()
    sent: list[dict[str, Any]] = []
    sim.dispatcher.enqueue = lambda _webhook_id, payload: sent.append(payload)  # type: ignore[method-assign]
    for version in ("2.0", "1.0"):
        sim.add_webhook(
            {
                "subscription_url": "http://receiver/webhooks/pipedrive/acme",
                "event_action": "*",
                "event_object": "*",
                "name": f"all events v{version}",
                "version": version,
            },
            owner_id=1,
        )
    first = sim.create("organization", {"name": "Acme"})
    second = sim.create("organization", {"name": "Acme AB"})
    deal = sim.create("deal", {"title": "Order 1", "org_id": first["id"]})
    other = sim.create("deal", {"title": "Order 2", "org_id": first["id"]})
    sim.move_deal(deal["id"], status="won")
    sim.merge("organization", first["id"], second["id"])
    sim.merge("deal", other["id"], deal["id"])
    sim.delete("deal", deal["id"])
    return sent


def test_every_delivery_the_simulator_sends_passes():
    deliveries = simulator_deliveries()
    kinds = {(p.get("v", 2), p["meta"]["action"], p["meta"]["entity"]) for p in deliveries}
    assert {(2, "delete", "organization"), (2, "delete", "deal"), (1, "deleted", "deal")} <= kinds
    assert any("merged_to_id" in p["meta"] for p in deliveries)

    for payload in deliveries:
        stored, event = parse_body(json.dumps(payload).encode())
        assert stored == payload and event.entity_id is not None


def test_nesting_up_to_the_limit_passes():
    payload = v2_deal_event(1)
    nested: Any = 1
    for _ in range(MAX_DEPTH - 3):  # payload → data → custom_fields → …
        nested = {"level": nested}
    payload["data"]["custom_fields"] = nested
    parse_body(encode(payload))


def test_the_delivery_the_variants_start_from_passes():
    parse_body(encode(v2_deal_event(41)))  # so each variant fails by what it changed


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in malformed_variants()])
def test_malformed_deliveries_are_refused_with_a_reason(body):
    with pytest.raises(PayloadError) as refused:
        parse_body(body)
    assert str(refused.value)  # a reason the receiver can answer with


def test_the_reason_names_the_field():
    payload = v2_deal_event(1)
    payload["data"]["stage_id"] = "3"
    with pytest.raises(PayloadError, match=r"data\.stage_id must be a number"):
        parse_body(encode(payload))
    payload = v2_deal_event(1)
    payload["meta"]["entity_id"] = {"id": 1}
    with pytest.raises(PayloadError, match=r"meta\.entity_id must be an id"):
        parse_body(encode(payload))


def test_a_plain_delivery_is_seen_plain_in_its_bytes():
    """The walk of every value is left out for what deliveries look like (so the check the
    variants above pass through is the byte check's fall-back, not a rarely used path)."""
    assert _tree_is_plain(encode(v2_deal_event(1)))
    assert all(_tree_is_plain(json.dumps(p).encode()) for p in simulator_deliveries())


@pytest.mark.parametrize("body", [pytest.param(b, id=n) for n, b in malformed_variants()])
def test_with_or_without_the_body_the_shape_check_refuses_alike(body):
    try:
        payload = decode(body)
    except PayloadError:
        return  # refused before the shape check
    with pytest.raises(PayloadError) as walked:
        check_shape(payload)
    with pytest.raises(PayloadError) as seen:
        check_shape(payload, body)
    assert str(seen.value) == str(walked.value)
