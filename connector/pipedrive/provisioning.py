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
from connector.sync.mapping import DEAL_FIELDS, ORGANIZATION_FIELDS, PipedriveLayout, extra_field

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
# An extra field's type → (the Pipedrive field_type created, the types that can be adopted).
# A monetary value is an object in v2 and a double a plain number: neither stands in for the
# other, and an enum takes option ids.
EXTRA_FIELD_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": (FIELD_TYPE, COMPATIBLE_FIELD_TYPES),
    "number": ("double", ("double",)),
    "monetary": ("monetary", ("monetary",)),
    "date": ("date", ("date",)),
    "enum": ("enum", ("enum",)),
}
# What the connector does over OAuth: deals, organizations (contacts), and the admin
# scope for custom fields, pipelines, stages and webhooks.
REQUIRED_OAUTH_SCOPES = ("deals:full", "contacts:full", "admin")
LOCK_TTL_S = 120.0
LOCK_WAIT_S = 120.0


@dataclass(frozen=True)
class WantedField:
    """One custom field the tenant's mapping writes: its name, type and (enum) options."""

    logical: str  # key in FieldKeys / PipedriveLayout
    name: str  # display name in Pipedrive
    setting: str  # the tenants-file key that names it
    field_type: str  # what the connector creates
    compatible: tuple[str, ...]  # the existing types it can adopt
    labels: tuple[str, ...] = ()  # enum option labels the mapping needs
    writes: str = "IFS text"  # what the mapping puts there, for the messages


@dataclass(frozen=True)
class FieldKeys:
    """Logical field name → the 40-char custom field key in this company, per entity; and
    for enum fields, option label → option id."""

    organization: dict[str, str] = field(default_factory=dict)
    deal: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "organization": dict(self.organization),
            "deal": dict(self.deal),
            "options": {entity: dict(found) for entity, found in self.options.items()},
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FieldKeys:
        options = {
            str(entity): {
                str(logical): {str(label): int(i) for label, i in labels.items()}
                for logical, labels in found.items()
            }
            for entity, found in (value.get("options") or {}).items()
        }
        return cls(dict(value.get("organization") or {}), dict(value.get("deal") or {}), options)

    def entity_keys(self, entity: FieldEntity) -> dict[str, str]:
        return self.organization if entity == "organization" else self.deal

    def complete(self, tenant: TenantConfig) -> bool:
        """Whether every field (and enum option) the tenant's mapping writes is known."""
        for entity, wanted in wanted_fields(tenant).items():
            keys = self.entity_keys(entity)
            options = self.options.get(entity, {})
            for each in wanted:
                if each.logical not in keys:
                    return False
                if not set(each.labels) <= set(options.get(each.logical, {})):
                    return False
        return True


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


def field_misfit(found: Mapping[str, Any], wanted: WantedField) -> str | None:
    """Why an existing field with the configured name cannot be adopted (None: it can)."""
    field_type = found.get("field_type")
    if found.get("edit_flag") is False:
        return f"that is a standard Pipedrive field ({field_type}), not a custom one"
    if field_type not in wanted.compatible:
        return (
            f"of type {field_type}; the connector writes {wanted.writes} there and needs "
            f"{'one of ' if len(wanted.compatible) > 1 else ''}{', '.join(wanted.compatible)}"
        )
    lacking = missing_labels(found, wanted)
    if lacking:
        return (
            f"without the option(s) {', '.join(map(repr, lacking))} that "
            f"{wanted.setting.removesuffix('.field')}.options maps IFS values to"
        )
    return None


def missing_labels(found: Mapping[str, Any], wanted: WantedField) -> list[str]:
    """The option labels the tenant's enum map names that the existing field lacks."""
    have = {normalise_name(str(o.get("label", ""))) for o in found.get("options") or ()}
    return [label for label in wanted.labels if normalise_name(label) not in have]


def option_ids(found: Mapping[str, Any], wanted: WantedField) -> dict[str, int]:
    """Option label (as the tenants file spells it) → Pipedrive's option id."""
    by_name = {
        normalise_name(str(o.get("label", ""))): int(o["id"])
        for o in found.get("options") or ()
        if o.get("id") is not None
    }
    return {
        label: by_name[normalise_name(label)]
        for label in wanted.labels
        if normalise_name(label) in by_name
    }


_EXTRA_WRITES = {
    "text": "IFS text",
    "number": "a number",
    "monetary": "an amount with its currency",
    "date": "a date",
    "enum": "one option",
}


def wanted_fields(tenant: TenantConfig) -> dict[FieldEntity, list[WantedField]]:
    """entity → the custom fields the tenant's mapping writes: built-in, then `extra`."""
    names = tenant.fields

    def builtin(logical: str) -> WantedField:
        return WantedField(
            logical, getattr(names, logical), f"fields.{logical}", FIELD_TYPE,
            COMPATIBLE_FIELD_TYPES,
        )  # fmt: skip

    wanted: dict[FieldEntity, list[WantedField]] = {
        "organization": [builtin(logical) for logical in ORGANIZATION_FIELDS],
        "deal": [builtin(logical) for logical in DEAL_FIELDS],
    }
    mappings: tuple[tuple[FieldEntity, str, Any], ...] = (
        ("organization", "customer_mapping", tenant.customer_mapping),
        ("deal", "order_mapping", tenant.order_mapping),
    )
    for entity, where, mapping in mappings:
        for name, extra in mapping.extra.items():
            created, compatible = EXTRA_FIELD_TYPES[extra.type]
            wanted[entity].append(
                WantedField(
                    extra_field(name),
                    extra.field,
                    f"{where}.extra.{name}.field",
                    created,
                    compatible,
                    extra.labels(),
                    _EXTRA_WRITES[extra.type],
                )
            )
    return wanted


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

    def cached() -> FieldKeys | None:
        value = store.get(tenant.id, FIELD_KEYS)
        keys = FieldKeys.from_json(value) if value is not None else None
        return keys if keys is not None and keys.complete(tenant) else None

    if not refresh and (keys := cached()) is not None:
        return keys
    with _provision_lock(client, tenant, coordination):
        # Another worker may have finished while we waited for the lock.
        if not refresh and (keys := cached()) is not None:
            return keys
        found: dict[FieldEntity, dict[str, str]] = {"organization": {}, "deal": {}}
        options: dict[str, dict[str, dict[str, int]]] = {"organization": {}, "deal": {}}
        for entity, wanted in wanted_fields(tenant).items():
            existing = {
                normalise_name(str(f.get("name", ""))): f
                for f in client.list_fields(entity)
                if f.get("key") and f.get("active_flag", True) is not False
            }
            for each in wanted:
                match = existing.get(normalise_name(each.name))
                misfit = field_misfit(match, each) if match is not None else None
                if misfit is not None:
                    article = "an" if entity == "organization" else "a"
                    # Adopting it would fail every write with Pipedrive's type error.
                    raise FieldMisfit(
                        f"tenant {tenant.id}: Pipedrive already has {article} {entity} field "
                        f"{each.name!r} {misfit}. Fix: give {each.setting} another name in "
                        f"the tenants file (the connector then creates its own "
                        f"{each.field_type} field), or change or delete that field in Pipedrive"
                    )
                if match is None and not create:
                    match = {
                        "key": f"(new field {each.name!r})",
                        "options": [{"id": NOT_CREATED, "label": label} for label in each.labels],
                    }
                elif match is None:
                    match = client.create_field(
                        entity, each.name, each.field_type, options=list(each.labels) or None
                    )
                    log.info(
                        "tenant %s: created Pipedrive %s field %r", tenant.id, entity, each.name
                    )
                key = match.get("key")
                if not isinstance(key, str) or not key:
                    raise RemoteError("pipedrive", f"{entity} field {each.name!r} has no key")
                found[entity][each.logical] = key
                if each.labels:
                    ids = option_ids(match, each)
                    if set(ids) != set(each.labels):
                        raise RemoteError(
                            "pipedrive",
                            f"{entity} field {each.name!r} lacks options it was made with",
                        )
                    options[entity][each.logical] = ids
        keys = FieldKeys(found["organization"], found["deal"], options)
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
        organization_options=keys.options.get("organization", {}),
        deal_options=keys.options.get("deal", {}),
    )
