"""`$metadata` of a simulated projection: the EDMX/CSDL v4 XML Olingo serves, derived from the
projection's description in `schema.py` (entity types, enum types, bound actions)."""

from __future__ import annotations

from functools import cache
from xml.etree import ElementTree as ET

from simulators.ifs.schema import EntityType, projection_types

NS_EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
NS_EDM = "http://docs.oasis-open.org/odata/ns/edm"
CORE_VOCABULARY = (
    "https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Core.V1.xml"
)
CORE_NAMESPACE = "Org.OData.Core.V1"
# Olingo names the one container of an IFS projection "Main".
CONTAINER = "Main"


# Prefixes are written literally (with their xmlns declarations where Olingo puts them)
# rather than registered in ElementTree's process-wide prefix table.
def _edmx(tag: str) -> str:
    return f"edmx:{tag}"


def _edm(tag: str) -> str:
    return tag


@cache
def metadata_document(projection: str, customer_key: str = "CustomerId") -> bytes:
    """The `$metadata` XML of `projection`; KeyError for a projection the simulator lacks."""
    types = projection_types(projection, customer_key)
    if not types:
        raise KeyError(projection)
    root = ET.Element(_edmx("Edmx"), {"Version": "4.0", "xmlns:edmx": NS_EDMX})
    reference = ET.SubElement(root, _edmx("Reference"), {"Uri": CORE_VOCABULARY})
    ET.SubElement(reference, _edmx("Include"), {"Namespace": CORE_NAMESPACE, "Alias": "Core"})
    services = ET.SubElement(root, _edmx("DataServices"))
    namespace = f"IfsApp.{projection}"
    schema = ET.SubElement(services, _edm("Schema"), {"xmlns": NS_EDM, "Namespace": namespace})
    # Olingo's order inside a schema: enum types, entity types, actions, the container.
    for entity in types:
        _enum_types(schema, entity, namespace)
    for entity in types:
        _entity_type(schema, entity)
    for entity in types:
        _actions(schema, entity)
    container = ET.SubElement(schema, _edm("EntityContainer"), {"Name": CONTAINER})
    for entity in types:
        ET.SubElement(
            container,
            _edm("EntitySet"),
            {"Name": entity.entity_set, "EntityType": entity.qualified_name},
        )
    ET.indent(root, space="  ")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def _enum_types(schema: ET.Element, entity: EntityType, namespace: str) -> None:
    for qualified, members in entity.enum_types.items():
        if not qualified.startswith(f"{namespace}."):
            continue
        name = qualified[len(namespace) + 1 :]
        enum = ET.SubElement(
            schema,
            _edm("EnumType"),
            {"Name": name, "IsFlags": "false", "UnderlyingType": "Edm.Int32"},
        )
        for value, member in enumerate(members):
            ET.SubElement(enum, _edm("Member"), {"Name": member, "Value": str(value)})


def _entity_type(schema: ET.Element, entity: EntityType) -> None:
    element = ET.SubElement(schema, _edm("EntityType"), {"Name": entity.name})
    key = ET.SubElement(element, _edm("Key"))
    ET.SubElement(key, _edm("PropertyRef"), {"Name": entity.key})
    for name, edm_type in entity.properties.items():
        attributes = {"Name": name, "Type": edm_type}
        if name in entity.required:
            attributes["Nullable"] = "false"
        if name in entity.max_lengths:
            attributes["MaxLength"] = str(entity.max_lengths[name])
        prop = ET.SubElement(element, _edm("Property"), attributes)
        if name == entity.key:
            # Given on create, never changed: PATCH refuses it.
            ET.SubElement(prop, _edm("Annotation"), {"Term": "Core.Immutable", "Bool": "true"})
        elif name in entity.read_only:
            # Kept by IFS itself (envelope, state): PATCH refuses it.
            ET.SubElement(prop, _edm("Annotation"), {"Term": "Core.Computed", "Bool": "true"})


def _actions(schema: ET.Element, entity: EntityType) -> None:
    for action in entity.actions:
        element = ET.SubElement(
            schema, _edm("Action"), {"Name": f"{entity.name}_{action.name}", "IsBound": "true"}
        )
        # IFS names the binding parameter "it".
        ET.SubElement(element, _edm("Parameter"), {"Name": "it", "Type": entity.qualified_name})
        for parameter in action.parameters:
            attributes = {"Name": parameter.name, "Type": parameter.edm_type}
            if not parameter.nullable:
                attributes["Nullable"] = "false"
            if parameter.max_length is not None:
                attributes["MaxLength"] = str(parameter.max_length)
            ET.SubElement(element, _edm("Parameter"), attributes)


__all__ = ["CONTAINER", "NS_EDM", "NS_EDMX", "metadata_document"]
