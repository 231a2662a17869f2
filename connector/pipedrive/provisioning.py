"""One-time setup of a tenant's Pipedrive company: custom fields, pipeline and stages, cached."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.errors import ConfigError, RemoteError
from connector.pipedrive.client import FieldEntity, PipedriveClient
from connector.storage.tenant_state import TenantStateStore
from connector.sync.mapping import DEAL_FIELDS, ORGANIZATION_FIELDS, PipedriveLayout

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.tenants import TenantConfig

log = logging.getLogger(__name__)

FIELD_KEYS = "field_keys"
PIPELINE = "pipeline"
# Text fields: every value the connector writes is an IFS string, and varchar values are
# searchable with exact_match (the upsert looks records up by them).
FIELD_TYPE = "varchar"
# Existing fields the connector can adopt: text it can write, found by exact-match search.
COMPATIBLE_FIELD_TYPES = ("varchar", "varchar_auto", "text")
# What the connector does over OAuth: deals, organizations (contacts), and the admin
# scope for custom fields, pipelines, stages and webhooks.
REQUIRED_OAUTH_SCOPES = ("deals:full", "contacts:full", "admin")
LOCK_TTL_S = 120.0
LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class FieldKeys:
    """Logical field name → the 40-char custom field key in this company, per entity."""

    organization: dict[str, str] = field(default_factory=dict)
    deal: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"organization": dict(self.organization), "deal": dict(self.deal)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FieldKeys:
        return cls(dict(value.get("organization") or {}), dict(value.get("deal") or {}))

    def complete(self) -> bool:
        return set(ORGANIZATION_FIELDS) <= set(self.organization) and set(DEAL_FIELDS) <= set(
            self.deal
        )


# Id of a pipeline or stage a dry run would create.
NOT_CREATED = 0


@dataclass(frozen=True)
class PipelineIds:
    """The tenant pipeline's id and its stage ids by stage name."""

    pipeline_id: int
    stage_ids: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"pipeline_id": self.pipeline_id, "stage_ids": dict(self.stage_ids)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> PipelineIds:
        stages = {str(k): int(v) for k, v in (value.get("stage_ids") or {}).items()}
        return cls(int(value["pipeline_id"]), stages)


@contextmanager
def _provision_lock(
    client: PipedriveClient, tenant: TenantConfig, coordination: Coordination | None
) -> Iterator[None]:
    coordination = coordination or client.coordination
    if coordination is None:
        # No shared coordination (a one-off CLI run): nothing else can be provisioning.
        yield
        return
    with coordination.lock(f"provision:{tenant.id}", ttl_s=LOCK_TTL_S, wait_s=LOCK_WAIT_S):
        yield


class FieldMisfit(ConfigError):
    """A Pipedrive field with a configured name exists with a type the connector cannot use."""


def field_misfit(found: Mapping[str, Any]) -> str | None:
    """Why an existing field with the configured name cannot be adopted (None: it can)."""
    field_type = found.get("field_type")
    if found.get("edit_flag") is False:
        return f"that is a standard Pipedrive field ({field_type}), not a custom one"
    if field_type not in COMPATIBLE_FIELD_TYPES:
        return (
            f"of type {field_type}; the connector writes IFS text there and needs one of "
            f"{', '.join(COMPATIBLE_FIELD_TYPES)}"
        )
    return None


def wanted_fields(tenant: TenantConfig) -> dict[FieldEntity, dict[str, str]]:
    """entity → logical name → display name."""
    names = tenant.fields
    return {
        "organization": {logical: getattr(names, logical) for logical in ORGANIZATION_FIELDS},
        "deal": {logical: getattr(names, logical) for logical in DEAL_FIELDS},
    }


def normalise_name(name: str) -> str:
    """How Pipedrive names are compared: case and runs of spaces do not matter."""
    return " ".join(name.split()).casefold()


def ensure_custom_fields(
    client: PipedriveClient,
    tenant: TenantConfig,
    store: TenantStateStore,
    *,
    coordination: Coordination | None = None,
    refresh: bool = False,
    create: bool = True,
) -> FieldKeys:
    """The keys of the tenant's custom fields, creating the missing fields once per tenant.

    Fields are found by display name (tenant.fields); the result is cached in tenant_state
    ("field_keys"). `refresh=True` ignores the cache (e.g. after a field was deleted in
    Pipedrive). Runs under the lock `provision:<tenant>` so that two workers starting at
    once do not both create the same field. `create=False` (a dry run) only reads: a missing
    field gets a placeholder key naming it, and nothing is cached.
    """
    if not refresh:
        cached = store.get(tenant.id, FIELD_KEYS)
        if cached is not None and FieldKeys.from_json(cached).complete():
            return FieldKeys.from_json(cached)
    with _provision_lock(client, tenant, coordination):
        if not refresh:
            # Another worker may have finished while we waited for the lock.
            cached = store.get(tenant.id, FIELD_KEYS)
            if cached is not None and FieldKeys.from_json(cached).complete():
                return FieldKeys.from_json(cached)
        found: dict[FieldEntity, dict[str, str]] = {"organization": {}, "deal": {}}
        for entity, wanted in wanted_fields(tenant).items():
            existing = {
                normalise_name(str(f.get("name", ""))): f
                for f in client.list_fields(entity)
                if f.get("key") and f.get("active_flag", True) is not False
            }
            for logical, display in wanted.items():
                match = existing.get(normalise_name(display))
                misfit = field_misfit(match) if match is not None else None
                if misfit is not None:
                    article = "an" if entity == "organization" else "a"
                    # Adopting it would fail every write with Pipedrive's type error.
                    raise FieldMisfit(
                        f"tenant {tenant.id}: Pipedrive already has {article} {entity} field "
                        f"{display!r} {misfit}. Fix: give fields.{logical} another name in "
                        "the tenants file (the connector then creates its own text field), "
                        "or rename or delete that field in Pipedrive"
                    )
                if match is None and not create:
                    match = {"key": f"(new field {display!r})"}
                elif match is None:
                    match = client.create_field(entity, display, FIELD_TYPE)
                    log.info("tenant %s: created Pipedrive %s field %r", tenant.id, entity, display)
                key = match.get("key")
                if not isinstance(key, str) or not key:
                    raise RemoteError("pipedrive", f"{entity} field {display!r} has no key")
                found[entity][logical] = key
        keys = FieldKeys(found["organization"], found["deal"])
        if create:
            store.put(tenant.id, FIELD_KEYS, keys.to_json())
        return keys


def ensure_pipeline(
    client: PipedriveClient,
    tenant: TenantConfig,
    store: TenantStateStore,
    *,
    coordination: Coordination | None = None,
    refresh: bool = False,
    create: bool = True,
) -> PipelineIds:
    """The tenant pipeline (tenant.pipedrive.pipeline) and its stages, creating what is missing.

    Stage names come from the stage map (tenant.stage_names); cached in tenant_state
    ("pipeline") and re-provisioned when the stage map names a stage the cache lacks.
    """
    wanted = tenant.stage_names

    def usable(value: dict[str, Any] | None) -> PipelineIds | None:
        if value is None:
            return None
        ids = PipelineIds.from_json(value)
        return ids if set(wanted) <= set(ids.stage_ids) else None

    if not refresh and (ids := usable(store.get(tenant.id, PIPELINE))) is not None:
        return ids
    with _provision_lock(client, tenant, coordination):
        if not refresh and (ids := usable(store.get(tenant.id, PIPELINE))) is not None:
            return ids
        name = tenant.pipedrive.pipeline
        pipeline = next(
            (
                p
                for p in client.list_pipelines()
                if normalise_name(str(p.get("name"))) == normalise_name(name)
            ),
            None,
        )
        if pipeline is None and not create:
            return PipelineIds(NOT_CREATED, {stage_name: NOT_CREATED for stage_name in wanted})
        if pipeline is None:
            pipeline = client.create_pipeline(name)
            log.info("tenant %s: created Pipedrive pipeline %r", tenant.id, name)
        pipeline_id = int(pipeline["id"])
        stages = {
            normalise_name(str(s.get("name"))): int(s["id"])
            for s in client.list_stages(pipeline_id)
            if not s.get("is_deleted")
        }
        stage_ids: dict[str, int] = {}
        for stage_name in wanted:
            stage_id = stages.get(normalise_name(stage_name))
            if stage_id is None and not create:
                stage_id = NOT_CREATED
            elif stage_id is None:
                stage_id = int(client.create_stage(pipeline_id, stage_name)["id"])
                log.info("tenant %s: created Pipedrive stage %r", tenant.id, stage_name)
            stage_ids[stage_name] = stage_id
        ids = PipelineIds(pipeline_id, stage_ids)
        if create:
            store.put(tenant.id, PIPELINE, ids.to_json())
        return ids


def ensure_layout(
    client: PipedriveClient,
    tenant: TenantConfig,
    store: TenantStateStore,
    *,
    create: bool = True,
    coordination: Coordination | None = None,
) -> PipedriveLayout:
    """Fields and pipeline together, in the shape connector.sync.mapping uses."""
    keys = ensure_custom_fields(client, tenant, store, coordination=coordination, create=create)
    pipeline = ensure_pipeline(client, tenant, store, coordination=coordination, create=create)
    return PipedriveLayout(
        organization_fields=keys.organization,
        deal_fields=keys.deal,
        pipeline_id=pipeline.pipeline_id,
        stage_ids=pipeline.stage_ids,
    )
