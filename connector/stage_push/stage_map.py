"""What a deal's stage or status means for its IFS order, per the tenant's stage map."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.pipedrive.provisioning import PipelineIds
from connector.storage.tenant_state import DatabaseTenantState
from connector.tenants import StageRule, TenantConfig

if TYPE_CHECKING:
    from connector.runtime import Runtime

PIPELINE_STATE_KEY = "pipeline"


def pipeline_stage_names(runtime: Runtime, tenant_id: str) -> dict[int, str]:
    """Stage id → stage name of the tenant pipeline, as provisioning cached it."""
    cached = DatabaseTenantState(runtime.database).get(tenant_id, PIPELINE_STATE_KEY)
    if cached is None:
        return {}
    return {stage_id: name for name, stage_id in PipelineIds.from_json(cached).stage_ids.items()}


def target_rule(
    tenant: TenantConfig, stage_name: str | None, status: str | None
) -> StageRule | None:
    """The stage-map rule that says how IFS must change for a deal in this stage/status.

    Won and lost deals follow the rule with that deal status (the one for their stage
    first); open deals the open rule of their stage. Only rules with `to_ifs` count.
    """
    rules = [rule for rule in tenant.stage_map if rule.to_ifs is not None]
    if status in ("won", "lost"):
        candidates = [rule for rule in rules if rule.deal_status == status]
        matching = [rule for rule in candidates if rule.stage == stage_name]
        return next(iter(matching or candidates), None)
    if status in (None, "open") and stage_name is not None:
        return next((r for r in rules if r.deal_status == "open" and r.stage == stage_name), None)
    return None


def ifs_corresponds(tenant: TenantConfig, rule: StageRule, order: dict[str, Any]) -> bool:
    """True when the IFS order already stands where `rule` would take it (nothing to write)."""
    current = tenant.rule_for_state(str(order.get(tenant.order_mapping.status)))
    if current is not None and (current.stage, current.deal_status) == (
        rule.stage,
        rule.deal_status,
    ):
        return True
    patch = rule.to_ifs.patch if rule.to_ifs is not None else None
    if not patch:
        return False
    return all(order.get(name) == value for name, value in patch.items())


def describe_target(stage_name: str | None, status: str | None) -> str:
    """The deal's position in words, for reasons and audit rows."""
    if status in ("won", "lost"):
        return f"{status} deal" + (f" in stage {stage_name!r}" if stage_name else "")
    return f"stage {stage_name!r}"
