"""A projection's OData `$metadata` (CSDL v4 XML) read into a small typed model: entity types
and their properties, keys, enum types, entity sets and bound actions with their parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from connector.errors import ConnectorError

NS_EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
NS_EDM = "http://docs.oasis-open.org/odata/ns/edm"
CORE = "Org.OData.Core.V1"
_V2_EDMX = "http://schemas.microsoft.com/ado/2007/06/edmx"
_VERSIONS = ("4.0", "4.01")
# Entity declarations are what XML bombs and external-entity reads are made of; CSDL has none.
_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


class MetadataError(ConnectorError):
    """The document is not OData v4 CSDL XML, or is CSDL with a broken required part."""


@dataclass(frozen=True)
class Property:
    """A structural property: `edm_type` is qualified (`Edm.String`, `IfsApp.X.CustomerOrderState`).

    `updatable` is False for a property annotated `Core.Computed` or `Core.Immutable`.
    """

    name: str
    edm_type: str
    nullable: bool = True
    max_length: int | None = None
    updatable: bool = True

    @property
    def is_collection(self) -> bool:
        return self.edm_type.startswith("Collection(")


@dataclass(frozen=True)
class EntityType:
    name: str
    qualified_name: str
    key: tuple[str, ...]
    properties: dict[str, Property] = field(hash=False)


@dataclass(frozen=True)
class EnumType:
    name: str
    qualified_name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class EntitySet:
    name: str
    entity_type: str


@dataclass(frozen=True)
class Parameter:
    """A non-binding parameter of an action; a non-nullable one must be given."""

    name: str
    edm_type: str
    nullable: bool = True
    max_length: int | None = None


@dataclass(frozen=True)
class BoundAction:
    """`<Action IsBound="true">`: `binding_type` is the type of its first (binding) parameter;
    `parameters` are the others. IFS names them `<Entity>_<Action>`, e.g. `CustomerOrder_Release`.
    """

    name: str
    qualified_name: str
    binding_parameter: str
    binding_type: str
    parameters: tuple[Parameter, ...]

    @property
    def required_parameters(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if not p.nullable)


@dataclass(frozen=True)
class ProjectionMetadata:
    """Everything one `$metadata` document declares, by qualified name."""

    namespace: str
    entity_types: dict[str, EntityType] = field(hash=False)
    enum_types: dict[str, EnumType] = field(hash=False)
    entity_sets: dict[str, EntitySet] = field(hash=False)
    actions: tuple[BoundAction, ...]

    def entity_type(self, name: str) -> EntityType | None:
        """By qualified name, or by plain name within the document's namespace."""
        return self.entity_types.get(name) or self.entity_types.get(f"{self.namespace}.{name}")

    def entity_type_of_set(self, entity_set: str) -> EntityType | None:
        found = self.entity_sets.get(entity_set)
        return self.entity_types.get(found.entity_type) if found else None

    def enum_type(self, name: str) -> EnumType | None:
        return self.enum_types.get(name) or self.enum_types.get(f"{self.namespace}.{name}")

    def actions_bound_to(self, entity_type: str) -> dict[str, BoundAction]:
        """Name → action, for the actions bound to one entity (not to a collection of them)."""
        qualified = self.entity_type(entity_type)
        target = qualified.qualified_name if qualified else entity_type
        return {a.name: a for a in self.actions if a.binding_type == target}


def parse_metadata(document: bytes | str) -> ProjectionMetadata:
    """Read a `$metadata` document; MetadataError when it is not OData v4 CSDL XML."""
    raw = document.encode("utf-8") if isinstance(document, str) else document
    if _DECLARATIONS.search(raw):
        raise MetadataError("$metadata carries a DOCTYPE or entity declaration; CSDL has none")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as error:
        raise MetadataError(f"$metadata is not XML: {error}") from None
    if root.tag == f"{{{_V2_EDMX}}}Edmx":
        raise MetadataError("$metadata is OData v2 (EDMX 1.0), not OData v4 CSDL")
    if root.tag != f"{{{NS_EDMX}}}Edmx":
        raise MetadataError(f"$metadata is not an OData v4 EDMX document (root element {root.tag})")
    version = root.get("Version")
    if version not in _VERSIONS:
        raise MetadataError(f"$metadata has EDMX Version {version!r}, expected 4.0 or 4.01")
    services = root.find(f"{{{NS_EDMX}}}DataServices")
    schemas = services.findall(f"{{{NS_EDM}}}Schema") if services is not None else []
    if not schemas:
        raise MetadataError("$metadata has no edmx:DataServices/Schema")
    aliases = _aliases(root, schemas)
    return _Reader(aliases).read(schemas)


def _required(element: ET.Element, attribute: str) -> str:
    value = element.get(attribute)
    if not value:
        tag = element.tag.rsplit("}", 1)[-1]
        named = f" {element.get('Name')!r}" if element.get("Name") else ""
        raise MetadataError(f"$metadata: {tag}{named} lacks its {attribute} attribute")
    return value


def _bool(element: ET.Element, attribute: str, default: bool) -> bool:
    value = element.get(attribute)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise MetadataError(f"$metadata: {attribute}={value!r} is not true or false")
    return value == "true"


def _max_length(element: ET.Element) -> int | None:
    """The MaxLength facet; None when absent or "max" (no limit)."""
    value = element.get("MaxLength")
    if value is None or value == "max":
        return None
    if not value.isdigit():
        raise MetadataError(f"$metadata: MaxLength={value!r} of {element.get('Name')!r}")
    return int(value)


def _aliases(root: ET.Element, schemas: list[ET.Element]) -> dict[str, str]:
    """Alias → namespace, from referenced vocabularies and the document's own schemas."""
    found: dict[str, str] = {}
    for include in root.iter(f"{{{NS_EDMX}}}Include"):
        alias, namespace = include.get("Alias"), include.get("Namespace")
        if alias and namespace:
            found[alias] = namespace
    for schema in schemas:
        alias = schema.get("Alias")
        if alias:
            found[alias] = _required(schema, "Namespace")
    return found


class _Reader:
    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def qualify(self, name: str) -> str:
        """Replace a leading alias by its namespace, inside `Collection(...)` too."""
        if name.startswith("Collection(") and name.endswith(")"):
            return f"Collection({self.qualify(name[len('Collection(') : -1])})"
        prefix, dot, rest = name.rpartition(".")
        if dot and prefix in self.aliases:
            return f"{self.aliases[prefix]}.{rest}"
        return name

    def read(self, schemas: list[ET.Element]) -> ProjectionMetadata:
        entity_types: dict[str, EntityType] = {}
        enum_types: dict[str, EnumType] = {}
        entity_sets: dict[str, EntitySet] = {}
        actions: list[BoundAction] = []
        container_namespace: str | None = None
        for schema in schemas:
            namespace = _required(schema, "Namespace")
            for element in schema.findall(f"{{{NS_EDM}}}EntityType"):
                entity = self.entity_type(element, namespace)
                entity_types[entity.qualified_name] = entity
            for element in schema.findall(f"{{{NS_EDM}}}EnumType"):
                name = _required(element, "Name")
                members = tuple(
                    _required(m, "Name") for m in element.findall(f"{{{NS_EDM}}}Member")
                )
                enum_types[f"{namespace}.{name}"] = EnumType(name, f"{namespace}.{name}", members)
            for element in schema.findall(f"{{{NS_EDM}}}Action"):
                if _bool(element, "IsBound", False):
                    actions.append(self.action(element, namespace))
            container = schema.find(f"{{{NS_EDM}}}EntityContainer")
            if container is not None:
                container_namespace = container_namespace or namespace
                for element in container.findall(f"{{{NS_EDM}}}EntitySet"):
                    name = _required(element, "Name")
                    type_name = self.qualify(_required(element, "EntityType"))
                    entity_sets[name] = EntitySet(name, type_name)
        for entity_set in entity_sets.values():
            if entity_set.entity_type not in entity_types:
                raise MetadataError(
                    f"$metadata: entity set {entity_set.name!r} names the undeclared type "
                    f"{entity_set.entity_type!r}"
                )
        return ProjectionMetadata(
            namespace=container_namespace or _required(schemas[0], "Namespace"),
            entity_types=entity_types,
            enum_types=enum_types,
            entity_sets=entity_sets,
            actions=tuple(actions),
        )

    def entity_type(self, element: ET.Element, namespace: str) -> EntityType:
        name = _required(element, "Name")
        key = tuple(
            _required(ref, "Name")
            for ref in element.findall(f"{{{NS_EDM}}}Key/{{{NS_EDM}}}PropertyRef")
        )
        properties: dict[str, Property] = {}
        for prop in element.findall(f"{{{NS_EDM}}}Property"):
            prop_name = _required(prop, "Name")
            properties[prop_name] = Property(
                name=prop_name,
                edm_type=self.qualify(_required(prop, "Type")),
                nullable=_bool(prop, "Nullable", True),
                max_length=_max_length(prop),
                updatable=not self.fixed(prop),
            )
        missing = [k for k in key if k not in properties]
        if missing:
            raise MetadataError(f"$metadata: the key of {name!r} names no property {missing[0]!r}")
        return EntityType(name, f"{namespace}.{name}", key, properties)

    def fixed(self, prop: ET.Element) -> bool:
        """Whether the property is annotated Core.Computed or Core.Immutable (true)."""
        for annotation in prop.findall(f"{{{NS_EDM}}}Annotation"):
            term = self.qualify(annotation.get("Term", ""))
            fixing = term in (f"{CORE}.Computed", f"{CORE}.Immutable")
            if fixing and _bool(annotation, "Bool", True):
                return True
        return False

    def action(self, element: ET.Element, namespace: str) -> BoundAction:
        name = _required(element, "Name")
        parameters = [
            Parameter(
                name=_required(p, "Name"),
                edm_type=self.qualify(_required(p, "Type")),
                nullable=_bool(p, "Nullable", True),
                max_length=_max_length(p),
            )
            for p in element.findall(f"{{{NS_EDM}}}Parameter")
        ]
        if not parameters:
            raise MetadataError(f"$metadata: bound action {name!r} has no binding parameter")
        binding, *others = parameters
        return BoundAction(
            name=name,
            qualified_name=f"{namespace}.{name}",
            binding_parameter=binding.name,
            binding_type=binding.edm_type,
            parameters=tuple(others),
        )


__all__ = [
    "BoundAction",
    "EntitySet",
    "EntityType",
    "EnumType",
    "MetadataError",
    "Parameter",
    "ProjectionMetadata",
    "Property",
    "parse_metadata",
]
