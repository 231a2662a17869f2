"""Does the tenant's configuration fit its IFS installation and Pipedrive company? Read from
IFS `$metadata` and Pipedrive's field, pipeline and rate-limit answers; each misfit with its fix."""

from __future__ import annotations

import difflib
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from connector.diagnostics.headroom import IFS, PIPEDRIVE
from connector.errors import ConnectorError
from connector.ifs.entity_sets import order_set
from connector.ifs.metadata import EntityType, ProjectionMetadata, Property
from connector.pipedrive.provisioning import (
    REQUIRED_OAUTH_SCOPES,
    field_misfit,
    missing_labels,
    normalise_name,
    wanted_fields,
)
from connector.tenants import ExtraField, ParameterValue, StageRule, TenantConfig

if TYPE_CHECKING:
    from connector.ifs.client import IfsClient
    from connector.pipedrive.client import FieldEntity, PipedriveClient

Level = Literal["error", "warning", "info"]

_NUMBER_TYPES = frozenset(
    {"Edm.Decimal", "Edm.Double", "Edm.Single", "Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte"}
)
# Values the connector can turn into text: what IFS serves as JSON scalars.
_SCALAR_TYPES = _NUMBER_TYPES | {
    "Edm.String",
    "Edm.Boolean",
    "Edm.Date",
    "Edm.DateTimeOffset",
    "Edm.TimeOfDay",
    "Edm.Guid",
    "Edm.SByte",
}
# What each mapped value must be: "key" the entity's key, "number" numeric, "state" the
# order state (an enum, or at least a string), "text" anything that renders as text.
Use = Literal["key", "text", "number", "state", "date", "enum"]
# What an extra field's type needs of its IFS property.
_EXTRA_USES: dict[str, Use] = {
    "text": "text",
    "number": "number",
    "monetary": "number",
    "date": "date",
    "enum": "enum",
}
_DATE_TYPES = frozenset({"Edm.Date", "Edm.DateTimeOffset"})
_CUSTOMER_USES: dict[str, Use] = {"customer_id": "key"}
_ORDER_USES: dict[str, Use] = {"order_no": "key", "value": "number", "status": "state"}


@dataclass
class Finding:
    """One thing the fit check found: where (a tenants-file key or remote object), what, fix."""

    system: str
    subject: str
    level: Level
    message: str
    fix: str | None = None


@dataclass
class FitReport:
    """Every finding for one tenant; it fits when no finding is an error."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings]}


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not found:
        # Case-only differences score low with difflib's defaults.
        lowered = {c.casefold(): c for c in candidates}
        return lowered.get(name.casefold())
    return found[0]


def _describe(prop: Property) -> str:
    facets = f", max {prop.max_length}" if prop.max_length is not None else ""
    return f"{prop.edm_type}{facets}"


# -- IFS ------------------------------------------------------------------------------------


class _IfsFit:
    def __init__(self, tenant: TenantConfig, findings: list[Finding]) -> None:
        self.tenant = tenant
        self.findings = findings

    def add(self, subject: str, level: Level, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(IFS, subject, level, message, fix))

    def entity(
        self, metadata: ProjectionMetadata, projection: str, entity_set: str, where: str
    ) -> EntityType | None:
        entity = metadata.entity_type_of_set(entity_set)
        if entity is None:
            closest = _closest(entity_set, metadata.entity_sets)
            self.add(
                where,
                "error",
                f"{projection}/$metadata declares no entity set {entity_set!r} "
                f"(it has: {', '.join(sorted(metadata.entity_sets)) or 'none'})",
                f"set {where}: {closest}" if closest else f"check {where}",
            )
        return entity

    def mapped(
        self,
        entity: EntityType,
        where: str,
        prop_name: str,
        use: Use,
        metadata: ProjectionMetadata,
        options: Mapping[str, str] | None = None,
    ) -> None:
        prop = entity.properties.get(prop_name)
        if prop is None:
            closest = _closest(prop_name, entity.properties)
            self.add(
                where,
                "error",
                f"{entity.name} has no property {prop_name!r}",
                (
                    f"did you mean {closest!r}? set {where}: {closest}"
                    if closest
                    else f"set {where} to one of {entity.name}'s properties"
                ),
            )
            return
        edm = prop.edm_type
        enum = metadata.enum_type(edm)
        if prop.is_collection or (edm not in _SCALAR_TYPES and enum is None):
            self.add(
                where,
                "error",
                f"{entity.name}.{prop_name} is {edm}: not a single value the connector can map",
                f"map {where} to a plain property",
            )
        elif use == "number" and edm not in _NUMBER_TYPES:
            what = "the deal value" if where == "order_mapping.value" else f"{where}'s type"
            self.add(
                where,
                "error",
                f"{entity.name}.{prop_name} is {edm}, not a number ({what} needs one)",
                f"map {where} to a numeric property such as TotalAmount",
            )
        elif use == "date" and edm not in _DATE_TYPES:
            self.add(
                where,
                "error",
                f"{entity.name}.{prop_name} is {edm}, not a date (Edm.Date or Edm.DateTimeOffset)",
                f"map {where} to a date property, or give it type: text",
            )
        elif use == "enum" and enum is not None:
            unknown = sorted(set(options or {}) - set(enum.members))
            if unknown:
                self.add(
                    where.removesuffix(".property") + ".options",
                    "error",
                    f"{', '.join(unknown)} are not values of {entity.name}.{prop_name} "
                    f"({enum.name}: {', '.join(enum.members)})",
                    "map the enum's values: " + ", ".join(enum.members),
                )
        elif use == "key" and entity.key != (prop_name,):
            self.add(
                where,
                "error",
                f"{prop_name!r} is not the key of {entity.name} (its key: "
                f"{', '.join(entity.key)}): records are read and written by key",
                f"set {where}: {entity.key[0]}" if len(entity.key) == 1 else None,
            )
        elif use == "state":
            self.state(entity, where, prop, metadata)

    def state(
        self, entity: EntityType, where: str, prop: Property, metadata: ProjectionMetadata
    ) -> None:
        enum = metadata.enum_type(prop.edm_type)
        if enum is None:
            self.add(
                where,
                "warning",
                f"{entity.name}.{prop.name} is {prop.edm_type}, not an enum: state values are "
                "compared as plain strings",
            )
            return
        self.add(
            where,
            "info",
            f"state enum {enum.qualified_name}: $filter literals are written "
            f"{enum.qualified_name}'Released'",
        )
        unknown = [r.ifs_state for r in self.tenant.stage_map if r.ifs_state not in enum.members]
        if unknown:
            self.add(
                "stage_map",
                "error",
                f"states {', '.join(unknown)} are not members of {enum.name} "
                f"({', '.join(enum.members)})",
                "remove their rules from stage_map",
            )

    def extras(
        self,
        entity: EntityType,
        where: str,
        extras: Mapping[str, ExtraField],
        metadata: ProjectionMetadata,
    ) -> set[str]:
        """Check each `extra` property; the properties they name."""
        for name, extra in extras.items():
            self.mapped(
                entity,
                f"{where}.extra.{name}.property",
                extra.property,
                _EXTRA_USES[extra.type],
                metadata,
                extra.options,
            )
        return {extra.property for extra in extras.values()}

    def custom_attributes(self, entity: EntityType, mapped: set[str], where: str) -> None:
        custom = sorted(name for name in entity.properties if name.startswith("Cf_"))
        unmapped = [name for name in custom if name not in mapped]
        if unmapped:
            self.add(
                where,
                "info",
                f"{entity.name} has custom attributes not mapped: {', '.join(unmapped)} "
                "(candidates for GL dimensions)",
            )

    def stage_rule(
        self, entity: EntityType, metadata: ProjectionMetadata, rule: StageRule, entity_name: str
    ) -> None:
        change = rule.to_ifs
        if change is None:
            return
        where = f"stage_map[{rule.ifs_state}].to_ifs"
        if change.patch is not None:
            for name, value in change.patch.items():
                prop = entity.properties.get(name)
                if prop is None:
                    closest = _closest(name, entity.properties)
                    self.add(
                        f"{where}.patch",
                        "error",
                        f"{entity.name} has no property {name!r} to patch",
                        f"did you mean {closest!r}?" if closest else "patch an existing property",
                    )
                elif not prop.updatable:
                    self.add(
                        f"{where}.patch",
                        "error",
                        f"{entity.name}.{name} is not updatable ($metadata: Core.Computed or "
                        "Core.Immutable)",
                        "use a bound action for state changes, or patch another property",
                    )
                else:
                    self.value(f"{where}.patch.{name}", name, _describe(prop), prop, value)
            return
        assert change.action is not None
        actions = metadata.actions_bound_to(entity.qualified_name)
        prefix = f"{entity_name}_"
        names = {a.removeprefix(prefix): action for a, action in actions.items()}
        action = names.get(change.action)
        if action is None:
            closest = _closest(change.action, names)
            self.add(
                f"{where}.action",
                "error",
                f"{entity.name} has no bound action {prefix}{change.action} "
                f"(it has: {', '.join(sorted(names)) or 'none'})",
                (
                    f"did you mean {closest!r}? set {where}.action: {closest}"
                    if closest
                    else f"set {where}.action to one of them"
                ),
            )
            return
        given = dict(change.parameters or {})
        declared = {p.name: p for p in action.parameters}
        for parameter in action.required_parameters:
            if given.get(parameter.name) is None:
                self.add(
                    f"{where}.parameters",
                    "error",
                    f"{action.name} requires parameter {parameter.name} "
                    f"({parameter.edm_type}"
                    + (f", max {parameter.max_length}" if parameter.max_length else "")
                    + ")",
                    f"add to_ifs: {{action: {change.action}, parameters: "
                    f"{{{parameter.name}: …}}}} to the {rule.ifs_state} rule",
                )
        for name, value in given.items():
            found = declared.get(name)
            if found is None:
                closest = _closest(name, declared)
                self.add(
                    f"{where}.parameters",
                    "error",
                    f"{action.name} has no parameter {name!r} "
                    f"(it has: {', '.join(declared) or 'none'})",
                    f"did you mean {closest!r}?" if closest else f"remove {name}",
                )
            else:
                facets = f", max {found.max_length}" if found.max_length else ""
                self.value(
                    f"{where}.parameters.{name}",
                    name,
                    f"{found.edm_type}{facets}",
                    Property(name, found.edm_type, found.nullable, found.max_length),
                    value,
                )

    def value(
        self, where: str, name: str, described: str, prop: Property, value: ParameterValue
    ) -> None:
        """Whether a literal from the tenants file suits the declared type and facets."""
        if value is None:
            if not prop.nullable:
                self.add(where, "error", f"{name} may not be null ({described})", None)
            return
        edm = prop.edm_type
        wrong = (
            (edm == "Edm.String" and not isinstance(value, str))
            or (edm == "Edm.Boolean" and not isinstance(value, bool))
            or (
                edm in _NUMBER_TYPES
                and (isinstance(value, bool) or not isinstance(value, int | float))
            )
        )
        if wrong:
            self.add(where, "error", f"{value!r} does not suit {name} ({described})")
        elif isinstance(value, str) and prop.max_length and len(value) > prop.max_length:
            self.add(
                where,
                "error",
                f"{value!r} is longer than {name} allows ({described})",
                f"shorten it to at most {prop.max_length} characters",
            )


def ifs_findings(
    tenant: TenantConfig,
    customers: ProjectionMetadata | None,
    orders: ProjectionMetadata | None,
) -> list[Finding]:
    """What the two projections' `$metadata` say about the tenant's mapping and stage map.

    The mapped properties are exactly what the sync's `$select` names
    (connector.sync.mapping.customer_properties / order_properties).
    """
    findings: list[Finding] = []
    fit = _IfsFit(tenant, findings)
    config = tenant.ifs
    if customers is not None:
        entity = fit.entity(
            customers, config.customer_projection, config.customer_entity_set,
            "ifs.customer_entity_set",
        )  # fmt: skip
        if entity is not None:
            mapping = tenant.customer_mapping.model_dump(exclude={"extra"})
            for logical, prop in mapping.items():
                use = _CUSTOMER_USES.get(logical, "text")
                fit.mapped(entity, f"customer_mapping.{logical}", prop, use, customers)
            extras = fit.extras(
                entity, "customer_mapping", tenant.customer_mapping.extra, customers
            )
            fit.custom_attributes(entity, {*mapping.values(), *extras}, "customer_mapping")
    if orders is not None:
        entity = fit.entity(
            orders, config.order_projection, config.order_entity_set, "ifs.order_entity_set"
        )
        if entity is not None:
            mapping = tenant.order_mapping.model_dump(exclude={"extra"})
            title = mapping.pop("title")
            for logical, prop in mapping.items():
                use = _ORDER_USES.get(logical, "text")
                fit.mapped(entity, f"order_mapping.{logical}", prop, use, orders)
            placeholders = [n for _, n, _, _ in string.Formatter().parse(title) if n]
            for name in placeholders:
                fit.mapped(entity, "order_mapping.title", name, "text", orders)
            extras = fit.extras(entity, "order_mapping", tenant.order_mapping.extra, orders)
            fit.custom_attributes(
                entity, {*mapping.values(), *placeholders, *extras}, "order_mapping"
            )
            entity_name = order_set(tenant).name.removesuffix("Set")
            for rule in tenant.stage_map:
                fit.stage_rule(entity, orders, rule, entity_name)
    return findings


# -- Pipedrive ------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _free_name(display: str, taken: set[str]) -> str:
    candidate = f"IFS {display}" if not display.upper().startswith("IFS") else f"{display} (IFS)"
    number = 2
    while normalise_name(candidate) in taken:
        candidate, number = f"{candidate} {number}", number + 1
    return candidate


def pipedrive_findings(
    tenant: TenantConfig,
    fields: Mapping[str, Sequence[Mapping[str, Any]]],
    pipelines: Sequence[Mapping[str, Any]],
    stages: Sequence[Mapping[str, Any]] | None,
    plan_burst: str | None,
    scopes: str | None,
    search_burst: str | None = None,
) -> list[Finding]:
    """What Pipedrive's answers say: fields by configured name and type, the pipeline and its
    stages, the plan's burst limit against `pipedrive.burst_limit`, and OAuth scopes."""
    findings: list[Finding] = []

    def add(subject: str, level: Level, message: str, fix: str | None = None) -> None:
        findings.append(Finding(PIPEDRIVE, subject, level, message, fix))

    for entity, wanted in wanted_fields(tenant).items():
        existing = {
            normalise_name(str(f.get("name", ""))): f
            for f in fields.get(entity, ())
            if f.get("key") and f.get("active_flag", True) is not False
        }
        for each in wanted:
            found = existing.get(normalise_name(each.name))
            subject = each.setting.removesuffix(".field")
            created = each.field_type + (
                f" with options {', '.join(each.labels)}" if each.labels else ""
            )
            if found is None:
                add(subject, "info", f"{entity} field {each.name!r} will be created ({created})")
                continue
            misfit = field_misfit(found, each)
            if misfit is None:
                add(
                    subject,
                    "info",
                    f"{entity} field {each.name!r} exists ({found.get('field_type')}): adopted",
                )
                continue
            lacking = missing_labels(found, each)
            if lacking and found.get("field_type") in each.compatible:
                fix = (
                    f"add the option(s) {', '.join(lacking)} to the field in Pipedrive, or map "
                    f"those IFS values to existing options in {subject}.options"
                )
            else:
                free = _free_name(each.name, set(existing))
                rename = (
                    f"fields: {{{each.logical}: {free}}}"
                    if each.setting.startswith("fields.")
                    else f"{each.setting}: {free}"
                )
                fix = (
                    f"rename it in the tenants file ({rename}) so the connector creates its "
                    f"own {each.field_type} field, or rename or delete the existing field in "
                    "Pipedrive"
                )
            add(
                subject,
                "error",
                f"Pipedrive already has {_article(entity)} {entity} field {each.name!r} {misfit}",
                fix,
            )

    name = tenant.pipedrive.pipeline
    pipeline = next(
        (p for p in pipelines if normalise_name(str(p.get("name"))) == normalise_name(name)),
        None,
    )
    if pipeline is None:
        add(
            "pipedrive.pipeline",
            "info",
            f"pipeline {name!r} will be created with stages {', '.join(tenant.stage_names)}",
        )
    else:
        have = {normalise_name(str(s.get("name"))) for s in stages or () if not s.get("is_deleted")}
        missing = [s for s in tenant.stage_names if normalise_name(s) not in have]
        add(
            "pipedrive.pipeline",
            "info",
            f"pipeline {name!r} exists (id {pipeline.get('id')})"
            + (f"; stages to create: {', '.join(missing)}" if missing else "; every stage exists"),
        )

    configured = tenant.pipedrive.burst_limit
    if plan_burst is None or not plan_burst.strip().isdigit():
        add(
            "pipedrive.burst_limit",
            "warning",
            "Pipedrive sent no x-ratelimit-limit header: the plan's burst limit is unknown",
        )
    elif configured > int(plan_burst):
        add(
            "pipedrive.burst_limit",
            "error",
            f"pipedrive.burst_limit {configured} is above the plan's {plan_burst} requests "
            "per 2 s (x-ratelimit-limit): the connector would get 429s, then 403 bans",
            f"set pipedrive.burst_limit: {plan_burst} (or lower)",
        )
    else:
        add(
            "pipedrive.burst_limit",
            "info",
            f"burst_limit {configured} within the plan's {plan_burst} per 2 s",
        )

    findings.extend(_search_burst(tenant, plan_burst, search_burst))

    if tenant.pipedrive.auth == "oauth2":
        if scopes is None:
            add(
                "pipedrive.auth",
                "warning",
                "the scopes Pipedrive granted are not known (the grant was stored before the "
                "connector kept them)",
                f"authorize the app again; it needs {', '.join(REQUIRED_OAUTH_SCOPES)}",
            )
        else:
            granted = set(scopes.split())
            lacking = [s for s in REQUIRED_OAUTH_SCOPES if s not in granted]
            if lacking:
                add(
                    "pipedrive.auth",
                    "error",
                    f"the OAuth grant lacks scopes {', '.join(lacking)} (granted: {scopes})",
                    "add them to the app's scopes in Pipedrive's Developer Hub and authorize again",
                )
            else:
                add("pipedrive.auth", "info", f"OAuth scopes granted: {scopes}")
    return findings


# Pipedrive's documentation gives search endpoints their own burst limit (DESIGN.md).
DOCUMENTED_SEARCH_BURST = 10


def _search_burst(
    tenant: TenantConfig, plan_burst: str | None, search_burst: str | None
) -> list[Finding]:
    """`pipedrive.search_burst_limit` against the x-ratelimit-limit of a search answer, when
    that differs from a plain read's (then it is the search limit); otherwise say that
    Pipedrive reported nothing separate for search instead of guessing a figure."""
    subject = "pipedrive.search_burst_limit"
    configured = tenant.pipedrive.search_burst_limit
    reported = search_burst.strip() if search_burst else None
    if reported and reported.isdigit() and reported != (plan_burst or "").strip():
        if configured > int(reported):
            return [
                Finding(
                    PIPEDRIVE,
                    subject,
                    "error",
                    f"pipedrive.search_burst_limit {configured} is above the {reported} "
                    "searches per 2 s Pipedrive reports for search (x-ratelimit-limit of a "
                    "search answer): the upserts' searches would get 429s, then 403 bans",
                    f"set pipedrive.search_burst_limit: {reported} (or lower)",
                )
            ]
        return [
            Finding(
                PIPEDRIVE,
                subject,
                "info",
                f"search_burst_limit {configured} within the {reported} per 2 s Pipedrive "
                "reports for search",
            )
        ]
    what = f"the same x-ratelimit-limit ({reported})" if reported else "no x-ratelimit-limit"
    documented = (
        f"; Pipedrive documents {DOCUMENTED_SEARCH_BURST} per 2 s for search"
        if configured > DOCUMENTED_SEARCH_BURST
        else ""
    )
    return [
        Finding(
            PIPEDRIVE,
            subject,
            "warning" if documented else "info",
            f"Pipedrive's search answer carried {what} as other reads: it reports no separate "
            f"search limit, so search_burst_limit {configured} could not be checked{documented}",
            f"keep pipedrive.search_burst_limit at or below {DOCUMENTED_SEARCH_BURST} unless "
            "your plan says otherwise"
            if documented
            else None,
        )
    ]


# -- reading the remotes ----------------------------------------------------------------------


def _read(findings: list[Finding], system: str, what: str, read: Callable[[], Any]) -> Any | None:
    try:
        return read()
    except ConnectorError as error:
        findings.append(Finding(system, what, "error", f"could not read {what}: {error}"))
        return None


SEARCH_PROBE_TERM = "ml-connector fit check"


def fit_ifs(tenant: TenantConfig, client: IfsClient) -> list[Finding]:
    """Two reads: the `$metadata` of the customer and of the order projection."""
    findings: list[Finding] = []
    config = tenant.ifs
    customers = _read(
        findings,
        IFS,
        f"{config.customer_projection}/$metadata",
        lambda: client.metadata(config.customer_projection),
    )
    if config.order_projection == config.customer_projection:
        orders = customers
    else:
        orders = _read(
            findings,
            IFS,
            f"{config.order_projection}/$metadata",
            lambda: client.metadata(config.order_projection),
        )
    return findings + ifs_findings(tenant, customers, orders)


def fit_pipedrive(
    tenant: TenantConfig, client: PipedriveClient, scopes: str | None
) -> list[Finding]:
    """Four or five reads: deal and organization fields, pipelines, the pipeline's stages,
    and one organization search (for the search limit's header)."""
    findings: list[Finding] = []
    fields: dict[str, list[dict[str, Any]]] = {}
    entities: tuple[FieldEntity, ...] = ("organization", "deal")
    for entity in entities:
        found = _read(findings, PIPEDRIVE, f"{entity} fields", partial(client.list_fields, entity))
        if found is None:
            return findings
        fields[entity] = found
    # One search (a read, 20 tokens): whether its answer reports a limit of its own. Before
    # the plain reads, whose headers the check's headroom line shows.
    search_burst = None
    searched = _read(
        findings,
        PIPEDRIVE,
        "organization search",
        lambda: client.search("organizations", SEARCH_PROBE_TERM, limit=1),
    )
    if searched is not None:
        search_burst = client.http.last_response_headers.get("x-ratelimit-limit")
    pipelines = _read(findings, PIPEDRIVE, "pipelines", client.list_pipelines)
    if pipelines is None:
        return findings
    # The limit header of a plain (non-search) read is the token's burst limit.
    plan_burst = client.http.last_response_headers.get("x-ratelimit-limit")
    name = normalise_name(tenant.pipedrive.pipeline)
    pipeline = next((p for p in pipelines if normalise_name(str(p.get("name"))) == name), None)
    stages = None
    if pipeline is not None:
        stages = _read(
            findings, PIPEDRIVE, "stages", lambda: client.list_stages(int(pipeline["id"]))
        )
    return findings + pipedrive_findings(
        tenant, fields, pipelines, stages, plan_burst, scopes, search_burst
    )
