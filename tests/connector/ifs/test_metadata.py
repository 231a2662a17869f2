"""Reading CSDL `$metadata`, and proof over HTTP that the simulator's metadata is what it does."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from connector.ifs.metadata import (
    BoundAction,
    EntityType,
    MetadataError,
    Parameter,
    ProjectionMetadata,
    Property,
    parse_metadata,
)
from tests.fixtures.ifs_sim import IfsSimHandle

PROJECTIONS = ("CustomerHandling", "CustomerOrderHandling")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def fetch(sim: IfsSimHandle, projection: str) -> requests.Response:
    return requests.get(
        f"{sim.projection_url}/{projection}.svc/$metadata", headers=sim.headers(), timeout=10
    )


def metadata_of(sim: IfsSimHandle, projection: str) -> ProjectionMetadata:
    response = fetch(sim, projection)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/xml")
    return parse_metadata(response.content)


def set_url(sim: IfsSimHandle, projection: str, entity_set: str) -> str:
    return f"{sim.projection_url}/{projection}.svc/{entity_set}"


def value_fits(prop: Property, value: Any, metadata: ProjectionMetadata) -> bool:
    """Whether a served JSON value is a value of the property's declared type and facets."""
    if value is None:
        return prop.nullable
    enum = metadata.enum_type(prop.edm_type)
    if enum is not None:
        return value in enum.members
    if prop.edm_type == "Edm.String":
        return isinstance(value, str) and (prop.max_length is None or len(value) <= prop.max_length)
    if prop.edm_type == "Edm.Boolean":
        return isinstance(value, bool)
    if prop.edm_type in ("Edm.Decimal", "Edm.Double", "Edm.Int32", "Edm.Int64"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if prop.edm_type == "Edm.Date":
        return isinstance(value, str) and bool(_DATE.match(value))
    if prop.edm_type == "Edm.DateTimeOffset":
        return isinstance(value, str) and bool(_DATETIME.match(value))
    return False


def sample_value(parameter: Parameter) -> Any:
    """A valid value for a required parameter, from its declared type alone."""
    if parameter.edm_type == "Edm.String":
        return "TEST"[: parameter.max_length or 4]
    if parameter.edm_type == "Edm.Boolean":
        return True
    if parameter.edm_type == "Edm.Decimal":
        return 1
    raise AssertionError(f"no sample for {parameter.edm_type}")


@pytest.fixture
def seeded(ifs_sim: IfsSimHandle) -> IfsSimHandle:
    ifs_sim.state.seed(customers=12, orders=60, seed=7)
    return ifs_sim


# -- what the simulator serves agrees with its metadata ----------------------------------
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_every_served_entity_has_exactly_the_metadata_properties_and_types(seeded, projection):
    metadata = metadata_of(seeded, projection)
    assert metadata.namespace == f"IfsApp.{projection}"
    assert metadata.entity_sets, "a projection serves at least one entity set"
    for entity_set in metadata.entity_sets.values():
        entity = metadata.entity_type_of_set(entity_set.name)
        assert isinstance(entity, EntityType)
        rows = requests.get(
            set_url(seeded, projection, entity_set.name), headers=seeded.headers(), timeout=10
        ).json()["value"]
        assert len(rows) > 1
        for row in rows:
            served = {name for name in row if not name.startswith("@odata.")}
            assert served == set(entity.properties), entity_set.name
            for name, prop in entity.properties.items():
                assert value_fits(prop, row[name], metadata), (name, prop, row[name])
            assert all(row[k] is not None for k in entity.key)


def test_the_order_state_enum_is_what_filters_take_and_what_objstate_holds(seeded):
    metadata = metadata_of(seeded, "CustomerOrderHandling")
    order = metadata.entity_type("CustomerOrder")
    assert order is not None and order.key == ("OrderNo",)
    state_type = order.properties["Objstate"].edm_type
    enum = metadata.enum_type(state_type)
    assert enum is not None and state_type == "IfsApp.CustomerOrderHandling.CustomerOrderState"
    served_states = set()
    for member in enum.members:
        response = requests.get(
            seeded.orders_url,
            params={"$filter": f"Objstate eq {state_type}'{member}'", "$select": "Objstate"},
            headers=seeded.headers(),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        served_states |= {row["Objstate"] for row in response.json()["value"]}
    assert served_states <= set(enum.members) and len(served_states) > 3


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_patch_accepts_exactly_the_properties_metadata_calls_updatable(seeded, projection):
    metadata = metadata_of(seeded, projection)
    for entity_set in metadata.entity_sets.values():
        entity = metadata.entity_type_of_set(entity_set.name)
        assert entity is not None
        row = requests.get(
            set_url(seeded, projection, entity_set.name), headers=seeded.headers(), timeout=10
        ).json()["value"][0]
        key = ",".join(f"{k}='{row[k]}'" for k in entity.key)
        url = f"{set_url(seeded, projection, entity_set.name)}({key})"
        updatable = {n: row[n] for n, p in entity.properties.items() if p.updatable}
        assert updatable and len(updatable) < len(entity.properties)
        written = requests.patch(
            url, json=updatable, headers=seeded.headers(**{"If-Match": "*"}), timeout=10
        )
        assert written.status_code == 200, written.text
        for name, prop in entity.properties.items():
            if prop.updatable:
                continue
            refused = requests.patch(
                url,
                json={name: "changed"},
                headers=seeded.headers(**{"If-Match": "*"}),
                timeout=10,
            )
            assert refused.status_code == 400, name


def test_every_action_in_metadata_runs_from_some_state_with_its_required_parameters(seeded):
    metadata = metadata_of(seeded, "CustomerOrderHandling")
    order_type = metadata.entity_type("CustomerOrder")
    assert order_type is not None
    states = metadata.enum_type(order_type.properties["Objstate"].edm_type)
    assert states is not None
    actions = metadata.actions_bound_to("CustomerOrder")
    assert {"CustomerOrder_Release", "CustomerOrder_Cancel"} <= set(actions)
    order_no = requests.get(
        seeded.orders_url, params={"$top": "1"}, headers=seeded.headers(), timeout=10
    ).json()["value"][0]["OrderNo"]
    for action in actions.values():
        assert action.binding_parameter == "it"
        parameters = {p.name: sample_value(p) for p in action.required_parameters}
        ran_from = [
            state for state in states.members if run(seeded, order_no, action, state, parameters)
        ]
        assert ran_from, f"{action.name} runs from no state"


def run(
    sim: IfsSimHandle, order_no: str, action: BoundAction, state: str, parameters: dict[str, Any]
) -> bool:
    sim.state.edit_order(order_no, Objstate=state)
    before = sim.state.get_order(order_no)["@odata.etag"]
    response = requests.post(
        f"{sim.orders_url}(OrderNo='{order_no}')/{action.qualified_name}",
        json=parameters,
        headers=sim.headers(**{"If-Match": before}),
        timeout=10,
    )
    if response.status_code == 204:
        assert sim.state.get_order(order_no)["@odata.etag"] != before
        return True
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "DATABASE_ERROR"
    return False


def test_a_required_parameter_left_out_is_a_400_and_changes_nothing(seeded):
    metadata = metadata_of(seeded, "CustomerOrderHandling")
    with_required = [
        a for a in metadata.actions_bound_to("CustomerOrder").values() if a.required_parameters
    ]
    assert with_required, "the simulated installation has an action that needs a parameter"
    order_no = "C1000000001"
    for action in with_required:
        for missing in action.required_parameters:
            given = {p.name: sample_value(p) for p in action.required_parameters if p != missing}
            for body in (given, {**given, missing.name: None}):
                before = seeded.state.get_order(order_no)
                response = requests.post(
                    f"{seeded.orders_url}(OrderNo='{order_no}')/{action.qualified_name}",
                    json=body,
                    headers=seeded.headers(**{"If-Match": before["@odata.etag"]}),
                    timeout=10,
                )
                assert response.status_code == 400, response.text
                assert missing.name in response.json()["error"]["message"]
                assert seeded.state.get_order(order_no) == before


def test_actions_missing_from_metadata_are_refused(seeded):
    orders = metadata_of(seeded, "CustomerOrderHandling")
    customers = metadata_of(seeded, "CustomerHandling")
    assert customers.actions_bound_to("CustomerInfo") == {}
    declared = set(orders.actions_bound_to("CustomerOrder"))
    order_url = f"{seeded.orders_url}(OrderNo='C1000000001')"
    for name in ("CustomerOrder_Relase", "CustomerOrder_Invoice", "CustomerOrder_release"):
        assert name not in declared
        response = requests.post(
            f"{order_url}/IfsApp.CustomerOrderHandling.{name}",
            json={},
            headers=seeded.headers(**{"If-Match": "*"}),
            timeout=10,
        )
        assert response.status_code == 404, name
    customer_id = seeded.state.get_customer("C00001")["CustomerId"]
    response = requests.post(
        f"{seeded.customers_url}(CustomerId='{customer_id}')/IfsApp.CustomerHandling.CustomerInfo_Release",
        json={},
        headers=seeded.headers(**{"If-Match": "*"}),
        timeout=10,
    )
    assert response.status_code == 404


def test_metadata_needs_a_token_like_every_projection_call(ifs_sim):
    url = f"{ifs_sim.projection_url}/CustomerOrderHandling.svc/$metadata"
    assert requests.get(url, timeout=10).status_code == 401


def test_both_documents_read_with_an_independent_odata_v4_parser(seeded):
    """odatapy (an Olingo-modelled OData v4 library) resolves the same types and actions."""
    xml_io = pytest.importorskip("odatapy.edm.xml_io")
    edm_module = pytest.importorskip("odatapy.edm")
    for projection in PROJECTIONS:
        document = fetch(seeded, projection).content
        ours = parse_metadata(document)
        edm = edm_module.Edm(xml_io.XmlEdmProvider(document))
        for entity_set in ours.entity_sets.values():
            theirs = edm.get_entity_set(entity_set.name)
            assert theirs is not None
            entity = ours.entity_types[entity_set.entity_type]
            their_type = edm.get_entity_type(
                edm_module.FullQualifiedName.parse(entity.qualified_name)
            )
            assert their_type is not None
            assert set(their_type.property_names) == set(entity.properties)
            assert their_type.key_predicate_names == list(entity.key)
        for action in ours.actions:
            found = edm.get_bound_action(
                edm_module.FullQualifiedName.parse(action.qualified_name), action.binding_type
            )
            assert found is not None, action.name


# -- the reader on its own ---------------------------------------------------------------
EDMX = 'xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"'
EDM = 'xmlns="http://docs.oasis-open.org/odata/ns/edm"'


def document(schema_body: str, alias: str = "", references: str = "") -> str:
    alias_attr = f' Alias="{alias}"' if alias else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><edmx:Edmx Version="4.0" {EDMX}>{references}'
        f'<edmx:DataServices><Schema {EDM} Namespace="IfsApp.Demo"{alias_attr}>{schema_body}'
        "</Schema></edmx:DataServices></edmx:Edmx>"
    )


ORDER = (
    '<EntityType Name="Order"><Key><PropertyRef Name="No"/></Key>'
    '<Property Name="No" Type="Edm.String" Nullable="false" MaxLength="12"/>'
    '<Property Name="State" Type="self.State"/>'
    '<Property Name="Note" Type="Edm.String" MaxLength="max"/>'
    '<Property Name="Stamp" Type="Edm.String"><Annotation Term="C.Computed"/></Property>'
    '<Property Name="Free" Type="Edm.String">'
    '<Annotation Term="C.Computed" Bool="false"/></Property>'
    "</EntityType>"
    '<EnumType Name="State"><Member Name="Open"/><Member Name="Done"/></EnumType>'
    '<Action Name="Order_Close" IsBound="true"><Parameter Name="it" Type="self.Order"/>'
    '<Parameter Name="Reason" Type="Edm.String" Nullable="false" MaxLength="5"/>'
    '<Parameter Name="Note" Type="Edm.String"/></Action>'
    '<Action Name="Order_CloseAll" IsBound="true">'
    '<Parameter Name="it" Type="Collection(self.Order)"/></Action>'
    '<Action Name="Unbound"><Parameter Name="x" Type="Edm.String"/></Action>'
    '<EntityContainer Name="Main"><EntitySet Name="OrderSet" EntityType="self.Order"/>'
    "</EntityContainer>"
)
CORE_AS_C = (
    '<edmx:Reference Uri="https://example.test/Core.xml">'
    '<edmx:Include Namespace="Org.OData.Core.V1" Alias="C"/></edmx:Reference>'
)


def test_reads_types_keys_facets_enums_and_bound_actions_resolving_aliases():
    metadata = parse_metadata(document(ORDER, alias="self", references=CORE_AS_C))
    order = metadata.entity_type_of_set("OrderSet")
    assert order is not None and order.qualified_name == "IfsApp.Demo.Order"
    assert order.key == ("No",)
    assert order.properties["No"] == Property("No", "Edm.String", False, 12, True)
    assert order.properties["State"].edm_type == "IfsApp.Demo.State"
    assert order.properties["Note"].max_length is None
    assert not order.properties["Stamp"].updatable and order.properties["Free"].updatable
    state = metadata.enum_type("State")
    assert state is not None and state.members == ("Open", "Done")
    assert [a.name for a in metadata.actions] == ["Order_Close", "Order_CloseAll"]
    close = metadata.actions_bound_to("Order")["Order_Close"]
    assert close.binding_type == "IfsApp.Demo.Order" and close.binding_parameter == "it"
    assert close.parameters == (
        Parameter("Reason", "Edm.String", False, 5),
        Parameter("Note", "Edm.String", True),
    )
    assert close.required_parameters == (Parameter("Reason", "Edm.String", False, 5),)
    assert "Order_CloseAll" not in metadata.actions_bound_to("IfsApp.Demo.Order")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{}", "not XML"),
        ("<html><body>Login</body></html>", "not an OData v4 EDMX"),
        (
            '<edmx:Edmx Version="1.0" xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx"/>',
            "OData v2",
        ),
        (f'<edmx:Edmx Version="3.0" {EDMX}><edmx:DataServices/></edmx:Edmx>', "Version '3.0'"),
        (
            f'<edmx:Edmx Version="4.0" {EDMX}><edmx:DataServices/></edmx:Edmx>',
            "no edmx:DataServices",
        ),
        (
            '<!DOCTYPE x [<!ENTITY a "aaaa">]>' + document(ORDER, alias="self"),
            "DOCTYPE",
        ),
        (document('<EntityType Name="T"><Property Type="Edm.String"/></EntityType>'), "Name"),
        (
            document('<EntityType Name="T"><Key><PropertyRef Name="Id"/></Key></EntityType>'),
            "names no property 'Id'",
        ),
        (
            document(
                '<EntityContainer Name="Main"><EntitySet Name="S" EntityType="IfsApp.Demo.X"/>'
                "</EntityContainer>"
            ),
            "undeclared type 'IfsApp.Demo.X'",
        ),
        (document('<Action Name="A" IsBound="true"/>'), "no binding parameter"),
        (document('<Action Name="A" IsBound="yes"/>'), "IsBound='yes'"),
    ],
)
def test_a_document_that_is_not_csdl_is_a_clear_metadata_error(text, says):
    with pytest.raises(MetadataError, match=re.escape(says)):
        parse_metadata(text)
