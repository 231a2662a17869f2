"""Stage push to IFS against the IFS simulator: ETags, 412 retries, dedupe, ordering, echoes."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from connector.errors import PreconditionFailed, RemoteError, TransientError
from connector.jobs import PUSH_STAGE
from connector.stage_push.push import push_stage_to_ifs
from connector.stage_push.reconcile import WATERMARK_ENTITY, reconcile_stages
from connector.storage.audit import AuditLog
from connector.storage.idmap import IdMap
from connector.storage.models import AuditRecord
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.watermarks import Watermarks
from connector.storage.webhook_events import WebhookEvents
from connector.storage.webhook_events import WebhookEventStatus as Status
from connector.webhooks.events import parse_payload
from tests.connector.webhooks.support import (
    INTEGRATION_USER,
    events_of,
    make_runtime,
    prepare_database,
    tenant_body,
    unique_tenant,
    v2_deal_event,
)

STAGES = {
    "Planned": 1,
    "Released": 2,
    "Reserved": 3,
    "Picked": 4,
    "Partially delivered": 5,
    "Blocked": 6,
    "Delivered": 7,
}
DEAL = 501
T1, T2, T3 = "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z", "2026-03-01T10:00:09Z"


@pytest.fixture
def tenant_id() -> str:
    return unique_tenant("push")


@pytest.fixture
def runtime(postgres_url, ifs_sim, tenant_id):
    prepare_database(postgres_url)
    runtime = make_runtime(
        postgres_url,
        {
            tenant_id: tenant_body(
                ifs_url=ifs_sim.url, namespace=ifs_sim.namespace, client_id=ifs_sim.client_id
            )
        },
    )
    runtime.vault.set(tenant_id, "ifs", "client_secret", ifs_sim.client_secret)
    DatabaseTenantState(runtime.database).put(
        tenant_id, "pipeline", {"pipeline_id": 1, "stage_ids": STAGES}
    )
    yield runtime
    runtime.close()


@pytest.fixture
def order_no(ifs_sim, runtime, tenant_id) -> str:
    """A Planned order in IFS, linked to deal DEAL."""
    order = ifs_sim.state.insert_order({"Objstate": "Planned", "Cf_Crm_Stage": None})
    IdMap(runtime.database).save(tenant_id, "order", order["OrderNo"], pipedrive_id=DEAL)
    return str(order["OrderNo"])


def store(runtime, tenant_id: str, payload: dict[str, Any]) -> int:
    """Persist an event as the receiver does, as handed to the broker."""
    stored = WebhookEvents(runtime.database).add(
        tenant_id, parse_payload(payload), payload, status=Status.ENQUEUED
    )
    return stored.id


def state_of(ifs_sim, order_no: str) -> str:
    return str(ifs_sim.state.get_order(order_no)["Objstate"])


def writes(ifs_sim) -> int:
    return int(ifs_sim.state.stats()["writes"])


def audit_rows(runtime, tenant_id: str) -> list[AuditRecord]:
    with runtime.database.session() as session:
        return list(
            session.scalars(
                select(AuditRecord).where(AuditRecord.tenant == tenant_id).order_by(AuditRecord.id)
            )
        )


class EditedBetweenReadAndWrite:
    """The real IFS client, with an IFS user editing the order right after some reads."""

    def __init__(self, client: Any, ifs_sim: Any, edits: list[dict[str, Any]]) -> None:
        self.client, self.ifs_sim, self.edits = client, ifs_sim, list(edits)
        self.reads = 0

    def get_order(self, order_no: str) -> Any:
        record = self.client.get_order(order_no)
        self.reads += 1
        if self.edits:
            self.ifs_sim.state.edit_order(order_no, **self.edits.pop(0))
        return record

    def patch_order(self, order_no: str, etag: str, changes: dict[str, Any]) -> Any:
        return self.client.patch_order(order_no, etag, changes)

    def order_action(self, order_no: str, etag: str, action: str, parameters: Any = None) -> Any:
        return self.client.order_action(order_no, etag, action, parameters)


# -- applying a stage change --------------------------------------------------------------


def test_a_stage_move_runs_the_mapped_action_with_the_etag(runtime, tenant_id, ifs_sim, order_no):
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2, previous_stage_id=1))

    outcome = push_stage_to_ifs(runtime, tenant_id, row_id)

    assert outcome.status == Status.APPLIED and outcome.writes == 1 and outcome.conflicts == 0
    assert (outcome.ifs_state_before, outcome.ifs_state_after) == ("Planned", "Released")
    assert state_of(ifs_sim, order_no) == "Released"
    assert ifs_sim.state.stats()["precondition_required"] == 0
    [event] = events_of(runtime, tenant_id)
    assert event.status == Status.APPLIED and event.processed_at is not None
    entry = IdMap(runtime.database).get(tenant_id, "order", order_no)
    assert entry is not None and entry.last_event_at is not None
    assert entry.last_event_at.isoformat().startswith("2026-03-01T10:00:00")
    [audit] = audit_rows(runtime, tenant_id)
    assert (audit.status, audit.direction, audit.record_key) == (
        "succeeded",
        "pipedrive_to_ifs",
        order_no,
    )
    assert audit.replay_task == PUSH_STAGE
    assert audit.replay_args == {"tenant": tenant_id, "webhook_event_id": row_id}


def test_a_won_deal_patches_the_mapped_fields(runtime, tenant_id, ifs_sim, order_no):
    payload = v2_deal_event(
        DEAL, stage_id=7, previous_stage_id=None, status="won", previous_status="open"
    )
    outcome = push_stage_to_ifs(runtime, tenant_id, store(runtime, tenant_id, payload))

    assert outcome.status == Status.APPLIED and outcome.change == {"patch": {"Cf_Crm_Stage": "Won"}}
    assert ifs_sim.state.get_order(order_no)["Cf_Crm_Stage"] == "Won"


def test_the_same_event_twice_changes_ifs_once(runtime, tenant_id, ifs_sim, order_no):
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2, previous_stage_id=1))

    first = push_stage_to_ifs(runtime, tenant_id, row_id)
    second = push_stage_to_ifs(runtime, tenant_id, row_id)

    assert (first.status, second.status) == (Status.APPLIED, Status.APPLIED)
    assert (first.writes, second.writes) == (1, 0)
    assert writes(ifs_sim) == 1
    assert [a.status for a in audit_rows(runtime, tenant_id)] == ["succeeded", "skipped"]


def test_an_older_event_delivered_late_changes_nothing(runtime, tenant_id, ifs_sim, order_no):
    older = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2, timestamp=T1))
    newer = store(
        runtime, tenant_id, v2_deal_event(DEAL, stage_id=6, previous_stage_id=2, timestamp=T2)
    )

    assert push_stage_to_ifs(runtime, tenant_id, newer).status == Status.APPLIED
    late = push_stage_to_ifs(runtime, tenant_id, older)

    assert late.status == Status.IGNORED and "older" in late.reason
    assert state_of(ifs_sim, order_no) == "Blocked"
    assert writes(ifs_sim) == 1


def test_duplicates_and_reordering_end_in_the_newest_state(runtime, tenant_id, ifs_sim, order_no):
    release = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2, timestamp=T1))
    block = store(
        runtime, tenant_id, v2_deal_event(DEAL, stage_id=6, previous_stage_id=2, timestamp=T2)
    )
    for row_id in (block, release, block, release):
        push_stage_to_ifs(runtime, tenant_id, row_id)

    assert state_of(ifs_sim, order_no) == "Blocked"
    assert writes(ifs_sim) == 1
    assert {e.id: e.status for e in events_of(runtime, tenant_id)} == {
        release: Status.IGNORED,
        block: Status.APPLIED,
    }


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_two_moves_within_one_second_follow_the_chain_of_previous_stages(
    runtime, tenant_id, ifs_sim, order_no, order
):
    release = store(
        runtime, tenant_id, v2_deal_event(DEAL, stage_id=2, previous_stage_id=1, timestamp=T3)
    )
    block = store(
        runtime, tenant_id, v2_deal_event(DEAL, stage_id=6, previous_stage_id=2, timestamp=T3)
    )
    sequence = [release, block] if order == "in-order" else [block, release]
    outcomes = [push_stage_to_ifs(runtime, tenant_id, row_id).status for row_id in sequence]

    assert state_of(ifs_sim, order_no) == "Blocked"
    assert outcomes == (
        [Status.APPLIED, Status.APPLIED]
        if order == "in-order"
        else [Status.APPLIED, Status.IGNORED]
    )


# -- nothing to do ------------------------------------------------------------------------


def test_the_connectors_own_change_is_an_echo_and_ifs_is_not_called(
    runtime, tenant_id, ifs_sim, order_no
):
    payload = v2_deal_event(DEAL, stage_id=2, change_source="api", user_id=INTEGRATION_USER)
    outcome = push_stage_to_ifs(runtime, tenant_id, store(runtime, tenant_id, payload))

    assert outcome.status == Status.IGNORED and "echo" in outcome.reason
    assert sum(ifs_sim.state.stats()["requests"].values()) == 0
    assert state_of(ifs_sim, order_no) == "Planned"
    [audit] = audit_rows(runtime, tenant_id)
    assert audit.status == "skipped" and "echo" in (audit.error or "")


def test_an_api_change_by_another_user_is_not_an_echo(runtime, tenant_id, ifs_sim, order_no):
    payload = v2_deal_event(DEAL, stage_id=2, change_source="api", user_id=INTEGRATION_USER + 1)

    assert push_stage_to_ifs(runtime, tenant_id, store(runtime, tenant_id, payload)).writes == 1


def test_an_order_already_in_the_state_is_not_written(runtime, tenant_id, ifs_sim, order_no):
    ifs_sim.state.edit_order(order_no, Objstate="Released")
    outcome = push_stage_to_ifs(
        runtime, tenant_id, store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))
    )

    assert outcome.status == Status.IGNORED and "already Released" in outcome.reason
    assert writes(ifs_sim) == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (v2_deal_event(DEAL, stage_id=3), "no IFS change mapped for stage 'Reserved'"),
        (v2_deal_event(DEAL, stage_id=99), "stage id 99 is not a stage"),
        (v2_deal_event(DEAL + 1, stage_id=2), "not linked to an IFS order"),
        (v2_deal_event(DEAL, stage_id=2, previous_stage_id=None), "neither stage nor status"),
        (v2_deal_event(DEAL, stage_id=2, action="create"), "create event"),
    ],
)
def test_events_that_map_to_no_ifs_change_are_ignored_with_a_reason(
    runtime, tenant_id, ifs_sim, order_no, payload, reason
):
    outcome = push_stage_to_ifs(runtime, tenant_id, store(runtime, tenant_id, payload))

    assert outcome.status == Status.IGNORED and reason in outcome.reason
    assert writes(ifs_sim) == 0
    [event] = events_of(runtime, tenant_id)
    assert event.status == Status.IGNORED and reason in (event.detail or "")


# -- concurrency with IFS users -----------------------------------------------------------


def test_a_412_rereads_and_writes_with_the_new_etag(runtime, tenant_id, ifs_sim, order_no):
    client = EditedBetweenReadAndWrite(
        runtime.ifs_client(tenant_id), ifs_sim, [{"Cf_Cost_Center": "CC-9"}]
    )
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))

    outcome = push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client)

    assert (outcome.status, outcome.conflicts, outcome.writes) == (Status.APPLIED, 1, 1)
    assert client.reads == 2
    assert ifs_sim.state.stats()["precondition_failed"] == 1
    order = ifs_sim.state.get_order(order_no)
    assert (order["Objstate"], order["Cf_Cost_Center"]) == ("Released", "CC-9")


def test_a_412_after_an_ifs_user_made_the_same_change_writes_nothing(
    runtime, tenant_id, ifs_sim, order_no
):
    client = EditedBetweenReadAndWrite(
        runtime.ifs_client(tenant_id), ifs_sim, [{"Objstate": "Released"}]
    )
    outcome = push_stage_to_ifs(
        runtime, tenant_id, store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2)), ifs=client
    )

    assert (outcome.status, outcome.conflicts, outcome.writes) == (Status.IGNORED, 1, 0)
    assert writes(ifs_sim) == 0


def test_endless_412s_give_up_after_three_retries_and_fail_the_event(
    runtime, tenant_id, ifs_sim, order_no
):
    client = EditedBetweenReadAndWrite(
        runtime.ifs_client(tenant_id), ifs_sim, [{"Cf_Cost_Center": f"CC-{n}"} for n in range(9)]
    )
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))

    with pytest.raises(PreconditionFailed):
        push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client)

    assert client.reads == 4
    assert state_of(ifs_sim, order_no) == "Planned"
    [event] = events_of(runtime, tenant_id)
    assert event.status == Status.FAILED
    [audit] = audit_rows(runtime, tenant_id)
    assert audit.status == "failed" and audit.replay_task == PUSH_STAGE


class Unavailable(EditedBetweenReadAndWrite):
    """IFS answering 503 to every read, as during an outage."""

    def get_order(self, order_no: str) -> Any:
        self.reads += 1
        raise RemoteError("IFS", "Service Unavailable", status=503, retryable=True)


def test_a_transient_ifs_failure_leaves_a_retrying_row_the_task_layer_owns(
    runtime, tenant_id, ifs_sim, order_no
):
    client = Unavailable(runtime.ifs_client(tenant_id), ifs_sim, [])
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))

    with pytest.raises(TransientError) as raised:
        push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client)

    [audit] = audit_rows(runtime, tenant_id)
    assert (audit.status, audit.record_key) == ("retrying", order_no)
    assert raised.value.audit_id == audit.id and "HTTP 503" in str(audit.error)
    [event] = events_of(runtime, tenant_id)
    assert event.status == Status.FAILED  # replayable should the retries run out

    # Celery's retry fails the same way: one row, counted; at exhaustion the task layer
    # (workers/base.py) marks it failed, and only then is it a failure to replay.
    with pytest.raises(TransientError):
        push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client, attempt=2)
    [audit] = audit_rows(runtime, tenant_id)
    assert (audit.status, audit.occurrences, audit.attempt) == ("retrying", 2, 2)
    assert AuditLog(runtime.database).latest_failed(tenant_id) == []
    assert AuditLog(runtime.database).mark_failed(audit.id)
    assert [row.id for row in AuditLog(runtime.database).latest_failed(tenant_id)] == [audit.id]


# -- reconciliation -----------------------------------------------------------------------


def deal(stage_id: int, update_time: str, status: str = "open", deal_id: int = DEAL) -> dict:
    return {"id": deal_id, "stage_id": stage_id, "status": status, "update_time": update_time}


def test_reconciliation_applies_a_missed_stage_change_once_and_keeps_a_watermark(
    runtime, tenant_id, ifs_sim, order_no
):
    listing = [deal(2, T2), deal(2, T1, deal_id=DEAL + 7)]  # the second deal is not linked
    observed: list[str] = []

    first = reconcile_stages(
        runtime, tenant_id, deals=listing, observe=lambda status, _s: observed.append(status)
    )
    second = reconcile_stages(runtime, tenant_id, deals=listing)

    assert (first.deals_seen, first.linked, first.applied) == (2, 1, 1)
    assert observed == ["applied"]  # one push, told once (the task turns it into the metric)
    assert (second.applied, second.already_seen) == (0, 1)
    assert state_of(ifs_sim, order_no) == "Released"
    assert writes(ifs_sim) == 1
    mark = Watermarks(runtime.database).get(tenant_id, WATERMARK_ENTITY)
    assert mark is not None and mark.watermark is not None
    assert mark.watermark.startswith("2026-03-01T10:00:05")
    assert mark.last_status == "succeeded"


def test_reconciliation_skips_deals_a_newer_webhook_already_handled(
    runtime, tenant_id, ifs_sim, order_no
):
    block = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=6, timestamp=T2))
    push_stage_to_ifs(runtime, tenant_id, block)

    summary = reconcile_stages(runtime, tenant_id, deals=[deal(2, T1)])

    assert summary.ignored == 1 and summary.applied == 0
    assert state_of(ifs_sim, order_no) == "Blocked"


def test_reconciliation_leaves_a_deal_where_the_connector_put_it(
    runtime, tenant_id, ifs_sim, order_no
):
    # The connector last pushed stage Released; IFS moved on since (sync not yet run).
    IdMap(runtime.database).save(
        tenant_id, "order", order_no, payload={"stage_id": 2, "status": "open"}
    )
    ifs_sim.state.edit_order(order_no, Objstate="Reserved")

    summary = reconcile_stages(runtime, tenant_id, deals=[deal(2, T1)])

    assert summary.ignored == 1
    assert state_of(ifs_sim, order_no) == "Reserved"
    assert writes(ifs_sim) == 0


def test_reconciliation_lists_deals_through_the_pipedrive_client(
    postgres_url, ifs_sim, pipedrive_sim
):
    prepare_database(postgres_url)
    tenant_id = unique_tenant("rec")
    body = tenant_body(
        ifs_url=ifs_sim.url, namespace=ifs_sim.namespace, client_id=ifs_sim.client_id
    )
    body["pipedrive"]["api_domain"] = pipedrive_sim.url
    runtime = make_runtime(postgres_url, {tenant_id: body})
    runtime.vault.set(tenant_id, "ifs", "client_secret", ifs_sim.client_secret)
    runtime.vault.set(tenant_id, "pipedrive", "api_token", pipedrive_sim.api_token)
    sim = pipedrive_sim.state
    pipeline = sim.add_pipeline("IFS sales orders")
    stages = {name: sim.add_stage(name, pipeline["id"])["id"] for name in ("Planned", "Released")}
    DatabaseTenantState(runtime.database).put(
        tenant_id, "pipeline", {"pipeline_id": pipeline["id"], "stage_ids": stages}
    )
    moved = sim.create(
        "deal", {"title": "C1", "pipeline_id": pipeline["id"], "stage_id": stages["Released"]}
    )
    order = ifs_sim.state.insert_order({"Objstate": "Planned"})
    IdMap(runtime.database).save(tenant_id, "order", order["OrderNo"], pipedrive_id=moved["id"])

    summary = reconcile_stages(runtime, tenant_id)

    assert (summary.linked, summary.applied, summary.failed) == (1, 1, 0), summary.errors
    assert state_of(ifs_sim, order["OrderNo"]) == "Released"
    assert summary.watermark is not None
    runtime.close()
