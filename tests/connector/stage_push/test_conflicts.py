"""Stage push conflict semantics against the IFS simulator: every way an installation refuses a
stale ETag that the tenant lists is re-read and re-decided; other errors are not. And action
parameters from the stage map reach IFS in the action's body."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.errors import RemoteError
from connector.runtime import Runtime
from connector.stage_push.push import push_stage_to_ifs
from connector.storage.idmap import IdMap
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.webhook_events import WebhookEventStatus as Status
from connector.tenants import DEFAULT_CONFLICT_CODES, DEFAULT_STAGE_MAP
from tests.connector.stage_push.test_push import (
    DEAL,
    STAGES,
    EditedBetweenReadAndWrite,
    state_of,
    store,
)
from tests.connector.webhooks.support import (
    make_runtime,
    prepare_database,
    tenant_body,
    unique_tenant,
    v2_deal_event,
)


@pytest.fixture
def runtime_for(postgres_url, ifs_sim) -> Iterator[Callable[..., tuple[Runtime, str]]]:
    """A runtime with one tenant whose tenants-file body takes the given overrides."""
    prepare_database(postgres_url)
    made: list[Runtime] = []

    def make(ifs: dict[str, Any] | None = None, **overrides: Any) -> tuple[Runtime, str]:
        tenant_id = unique_tenant("conflict")
        body = tenant_body(
            ifs_url=ifs_sim.url, namespace=ifs_sim.namespace, client_id=ifs_sim.client_id
        )
        body["ifs"].update(ifs or {})
        body.update(overrides)
        runtime = make_runtime(postgres_url, {tenant_id: body})
        made.append(runtime)
        runtime.vault.set(tenant_id, "ifs", "client_secret", ifs_sim.client_secret)
        DatabaseTenantState(runtime.database).put(
            tenant_id, "pipeline", {"pipeline_id": 1, "stage_ids": STAGES}
        )
        return runtime, tenant_id

    yield make
    for runtime in made:
        runtime.close()


def _planned_order(ifs_sim, runtime: Runtime, tenant_id: str) -> str:
    order = ifs_sim.state.insert_order({"Objstate": "Planned"})
    IdMap(runtime.database).save(tenant_id, "order", order["OrderNo"], pipedrive_id=DEAL)
    return str(order["OrderNo"])


def test_the_default_codes_are_the_ones_error_sys_raises_for_a_modified_or_locked_row() -> None:
    assert DEFAULT_CONFLICT_CODES == ("ORA-20114", "ORA-20113")


@pytest.mark.parametrize(
    ("status", "code", "ora", "conflict_codes"),
    [
        (412, "ODP_PRECONDITION_FAILED", 20114, None),  # the OData answer: always a conflict
        (400, "DATABASE_ERROR", 20114, None),  # Error_SYS.Record_Modified, a default
        (400, "DATABASE_ERROR", 20113, None),  # Error_SYS.Record_Locked, a default
        (409, "ODP_CONFLICT", 20114, ["ODP_CONFLICT"]),  # an installation's own code, listed
    ],
)
def test_a_listed_conflict_answer_is_reread_and_redecided(
    runtime_for, ifs_sim, status: int, code: str, ora: int, conflict_codes: list[str] | None
) -> None:
    ifs = {"conflict_codes": conflict_codes} if conflict_codes is not None else {}
    runtime, tenant_id = runtime_for(ifs=ifs)
    order_no = _planned_order(ifs_sim, runtime, tenant_id)
    ifs_sim.state.configure(stale_etag_status=status, stale_etag_code=code, stale_etag_ora=ora)
    client = EditedBetweenReadAndWrite(
        runtime.ifs_client(tenant_id), ifs_sim, [{"Cf_Cost_Center": "CC-9"}]
    )
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))

    outcome = push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client)

    assert (outcome.status, outcome.conflicts, outcome.writes) == (Status.APPLIED, 1, 1)
    assert client.reads == 2
    order = ifs_sim.state.get_order(order_no)
    assert (order["Objstate"], order["Cf_Cost_Center"]) == ("Released", "CC-9")


def test_an_unlisted_error_code_is_not_a_conflict_and_fails_at_once(runtime_for, ifs_sim) -> None:
    runtime, tenant_id = runtime_for()
    order_no = _planned_order(ifs_sim, runtime, tenant_id)
    ifs_sim.state.configure(stale_etag_status=409, stale_etag_code="ODP_CONFLICT")
    client = EditedBetweenReadAndWrite(
        runtime.ifs_client(tenant_id), ifs_sim, [{"Cf_Cost_Center": "CC-9"}]
    )
    row_id = store(runtime, tenant_id, v2_deal_event(DEAL, stage_id=2))

    with pytest.raises(RemoteError, match="ODP_CONFLICT"):
        push_stage_to_ifs(runtime, tenant_id, row_id, ifs=client)

    assert client.reads == 1
    assert state_of(ifs_sim, order_no) == "Planned"


def test_stage_map_action_parameters_are_sent_in_the_action_body(runtime_for, ifs_sim) -> None:
    stage_map = [
        rule.model_dump(exclude_none=True)
        | (
            {"to_ifs": {"action": "CancelOrder", "parameters": {"CancelReason": "CRM"}}}
            if rule.ifs_state == "Cancelled"
            else {}
        )
        for rule in DEFAULT_STAGE_MAP
    ]
    runtime, tenant_id = runtime_for(stage_map=stage_map)
    order_no = _planned_order(ifs_sim, runtime, tenant_id)
    event = v2_deal_event(
        DEAL, stage_id=1, previous_stage_id=1, status="lost", previous_status="open"
    )

    outcome = push_stage_to_ifs(runtime, tenant_id, store(runtime, tenant_id, event))

    assert outcome.status == Status.APPLIED, outcome.reason
    assert outcome.change == {"action": "CancelOrder", "parameters": {"CancelReason": "CRM"}}
    order = ifs_sim.state.get_order(order_no)
    assert (order["Objstate"], order["CancelReason"]) == ("Cancelled", "CRM")
