"""Parsing webhook v2 and v1 payloads into one event type."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connector.webhooks.events import DealState, PayloadError, parse_body, parse_payload
from tests.connector.webhooks.support import v2_deal_event


def test_a_raw_body_parses_into_the_payload_to_store_and_its_event():
    payload = v2_deal_event(12, event_id="e-12")

    stored, event = parse_body(json.dumps(payload).encode())

    assert stored == payload
    assert (event.event_id, event.entity_id) == ("e-12", 12)


def test_v2_change_event():
    payload = v2_deal_event(
        12, stage_id=3, previous_stage_id=2, event_id="5f0c1a2e-uuid", user_id=900
    )
    event = parse_payload(payload)

    assert event.version == 2
    assert (event.event_id, event.action, event.entity, event.entity_id) == (
        "5f0c1a2e-uuid",
        "change",
        "deal",
        12,
    )
    assert (event.change_source, event.user_id) == ("app", 900)
    assert event.timestamp == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert event.current_state == DealState(3, "open")
    assert event.previous_state == DealState(2, "open")
    assert event.stage_changed


def test_v2_status_change_without_stage_change():
    event = parse_payload(
        v2_deal_event(1, stage_id=4, previous_stage_id=None, status="won", previous_status="open")
    )

    assert event.previous_state == DealState(4, "open")
    assert event.stage_changed


def test_v2_edit_without_stage_or_status_is_no_stage_change():
    payload = v2_deal_event(1, previous_stage_id=None)
    payload["previous"] = {"title": "old title"}

    assert not parse_payload(payload).stage_changed
    assert not parse_payload(v2_deal_event(1, previous_stage_id=None)).stage_changed


def test_v1_event_uses_a_content_hash_as_id_that_ignores_the_retry_counter():
    payload: dict[str, Any] = {
        "v": 1,
        "event": "updated.deal",
        "current": {"id": 7, "stage_id": "3", "status": "won"},
        "previous": {"id": 7, "stage_id": "3", "status": "open"},
        "retry": 0,
        "meta": {
            "v": 1,
            "action": "updated",
            "object": "deal",
            "id": 7,
            "user_id": 900,
            "timestamp": 1767261600,
            "timestamp_micro": 1767261600123456,
            "change_source": "api",
        },
    }
    first = parse_payload(payload)
    second = parse_payload({**payload, "retry": 2})
    other = parse_payload({**payload, "current": {**payload["current"], "status": "lost"}})

    assert first.version == 1 and first.action == "change" and first.entity_id == 7
    assert first.event_id == second.event_id != other.event_id
    assert len(first.event_id) == 64
    assert first.timestamp == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert first.current_state == DealState(3, "won")
    assert first.previous_state == DealState(3, "open")  # v1 previous is the whole object
    assert first.stage_changed
    assert (first.change_source, first.user_id) == ("api", 900)


def test_v2_without_event_id_falls_back_to_the_hash():
    payload = v2_deal_event(3)
    del payload["meta"]["id"]
    again = json.loads(json.dumps(payload))
    again["meta"]["attempt"] = 3

    assert parse_payload(payload).event_id == parse_payload(again).event_id


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"meta": []}',
        b'{"meta": {"entity": "deal"}}',
        b'{"meta": {"action": "change"}}',
        b'{"meta": {"action": "change", "entity": "deal"}, "data": [1]}',
        b'{"meta": {"action": "change", "entity": "deal"}, "previous": "x"}',
        b'{"meta": {"action": "boom", "entity": "deal"}}',
    ],
)
def test_malformed_payloads_raise_payload_error(body):
    with pytest.raises(PayloadError):
        parse_body(body)
