"""IfsClient against the IFS simulator over real HTTP: paging, keys, writes, actions, faults."""

from __future__ import annotations

import threading
import uuid

import pytest

from connector.coordination import Coordination
from connector.errors import PreconditionFailed, RemoteError
from connector.http import RetryPolicy
from connector.ifs.client import IfsClient
from connector.ifs.entity_sets import EntitySet, key_segment
from connector.ifs.odata import EnumLiteral, Field, Query
from connector.ratelimit import RateLimited
from connector.tenants import TenantConfig
from simulators.ifs.schema import customer_order

ORDER_STATE = "IfsApp.CustomerOrderHandling.CustomerOrderState"
CUSTOMERS = EntitySet("CustomerHandling.svc", "CustomerInfoSet", "CustomerId")


def order_keys(ifs_sim) -> list[str]:
    return sorted(row["OrderNo"] for row in _all_orders(ifs_sim))


def _all_orders(ifs_sim):
    entity = customer_order()
    return [ifs_sim.state.get(entity, key) for key in ifs_sim.state.keys(entity)]


def test_top_skip_paging_yields_every_order_once(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=20, orders=250)
    keys = [record.key for record in ifs_client.iter_records(ifs_client.orders, page_size=40)]
    assert keys == order_keys(ifs_sim)
    assert len(keys) == 250
    # 7 windows of 40 (the last one short); no nextLink was needed
    assert ifs_sim.state.stats()["requests"]["GET CustomerOrderSet"] == 7


def test_next_link_paging_yields_every_order_once(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=20, orders=250)
    records = list(ifs_client.iter_records(ifs_client.orders, page_size=100, server_page_size=30))
    assert [record.key for record in records] == order_keys(ifs_sim)
    # windows of 100 arrive in pages of 30: 4 + 4 + 2 responses
    assert ifs_sim.state.stats()["requests"]["GET CustomerOrderSet"] == 10


def test_query_top_and_filter_are_respected(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=10, orders=120)
    limited = list(ifs_client.iter_records(ifs_client.orders, Query(top=55), page_size=20))
    assert [r.key for r in limited] == order_keys(ifs_sim)[:55]
    released = EnumLiteral(ORDER_STATE, "Released")
    selected = list(
        ifs_client.iter_records(
            ifs_client.orders,
            Query(filter=Field("Objstate") == released, select=["Objstate"]),
            page_size=7,
        )
    )
    expected = sorted(r["OrderNo"] for r in _all_orders(ifs_sim) if r["Objstate"] == "Released")
    assert [r.key for r in selected] == expected and expected
    assert all(set(r.data) == {"Objstate", "OrderNo"} for r in selected)


def test_string_literals_with_quotes_filter_exactly(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=3, orders=0)
    ifs_sim.state.insert_customer({"CustomerId": "OB'1", "Name": "O'Brien Marine"})
    found = list(
        ifs_client.iter_records(CUSTOMERS, Query(filter=Field("Name") == "O'Brien Marine"))
    )
    assert [r.key for r in found] == ["OB'1"]
    injected = Query(filter=Field("Name") == "x' or Name ne 'x")
    assert list(ifs_client.iter_records(CUSTOMERS, injected)) == []


def test_get_by_key_escapes_quotes_and_url_characters(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=0)
    ifs_sim.state.insert_customer({"CustomerId": "O'B #1?&", "Name": "Odd key"})
    record = ifs_client.get_record(CUSTOMERS, "O'B #1?&")
    assert record.key == "O'B #1?&" and record.data["Name"] == "Odd key"
    segment = key_segment("CustomerOrderSet", "OrderNo", "O'1")
    assert segment == "CustomerOrderSet(OrderNo='O%27%271')"


def test_missing_record_is_a_404_remote_error(ifs_sim, ifs_client: IfsClient):
    with pytest.raises(RemoteError) as raised:
        ifs_client.get_order("NOPE")
    assert raised.value.status == 404 and not raised.value.retryable


def test_patch_returns_the_updated_record(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    order = ifs_client.get_order(order_keys(ifs_sim)[0])
    updated = ifs_client.patch_order(order.key, order.etag, {"Cf_Crm_Stage": "Won"})
    assert updated.data["Cf_Crm_Stage"] == "Won"
    assert updated.etag != order.etag
    assert ifs_sim.state.get_order(order.key)["Cf_Crm_Stage"] == "Won"
    assert ifs_sim.state.get_order(order.key)["@odata.etag"] == updated.etag


def test_patch_with_a_stale_etag_is_precondition_failed(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    order = ifs_client.get_order(order_keys(ifs_sim)[0])
    ifs_sim.state.edit_order(order.key, CustomerPoNo="EDITED-BY-USER")
    with pytest.raises(PreconditionFailed) as raised:
        ifs_client.patch_order(order.key, order.etag, {"Cf_Crm_Stage": "Won"})
    assert raised.value.status == 412
    assert ifs_sim.state.get_order(order.key)["Cf_Crm_Stage"] != "Won"
    assert ifs_sim.state.stats()["precondition_failed"] == 1  # not retried


def test_writes_need_an_etag(ifs_sim, ifs_client: IfsClient):
    with pytest.raises(ValueError):
        ifs_client.patch_order("C1", "", {"Cf_Crm_Stage": "Won"})
    with pytest.raises(ValueError):
        ifs_client.order_action("C1", "", "Release")
    assert ifs_sim.state.stats()["requests"] == {}


def test_bound_action_changes_the_state(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=0)
    created = ifs_sim.state.insert_order({"Objstate": "Planned"})
    order = ifs_client.get_order(created["OrderNo"])
    released = ifs_client.order_action(order.key, order.etag, "Release")
    assert released.data["Objstate"] == "Released" and released.etag != order.etag
    with pytest.raises(PreconditionFailed):
        ifs_client.order_action(order.key, order.etag, "Block")
    assert ifs_client.orders.action_name("Release") == (
        "IfsApp.CustomerOrderHandling.CustomerOrder_Release"
    )
    with pytest.raises(ValueError):
        ifs_client.orders.action_name("Release/../x")


def test_429_retry_after_is_honoured(ifs_sim, ifs_client: IfsClient, waits):
    ifs_sim.state.seed(customers=2, orders=3)
    ifs_sim.state.set_faults(force_429=1, retry_after_s=7)
    assert ifs_client.get_order(order_keys(ifs_sim)[0]).key
    assert waits and waits[0] >= 7
    assert ifs_sim.state.stats()["rate_limited"] == 1


def test_503_is_retried(ifs_sim, make_ifs_client, waits):
    ifs_client = make_ifs_client(policy=RetryPolicy(max_tries=20, base_s=0.001, cap_s=0.01))
    ifs_sim.state.seed(customers=2, orders=40)
    # seeded faults: the same draws every run; half the requests fail
    ifs_sim.state.set_faults(error_rate=0.5, seed=7)
    keys = [r.key for r in ifs_client.iter_records(ifs_client.orders, page_size=5)]
    assert keys == order_keys(ifs_sim)
    failures = ifs_sim.state.stats()["responses"].get("503", 0)
    assert failures > 0 and len(waits) == failures


def test_persistent_503_gives_up_as_retryable(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    ifs_sim.state.set_faults(error_rate=1.0)
    with pytest.raises(RemoteError) as raised:
        ifs_client.get_order(order_keys(ifs_sim)[0])
    assert raised.value.retryable and raised.value.status == 503
    assert ifs_sim.state.stats()["responses"]["503"] == 4  # QUICK.max_tries


def test_504_timeout_is_retried(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    ifs_sim.state.set_faults(timeout_rate=0.5, seed=3)
    for key in order_keys(ifs_sim):
        assert ifs_client.get_order(key).key == key


def test_400_is_not_retried_and_keeps_the_ifs_text(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    with pytest.raises(RemoteError) as raised:
        list(ifs_client.iter_records(ifs_client.orders, Query(filter=Field("NoSuchProperty") == 1)))
    error = raised.value
    assert error.status == 400 and not error.retryable
    assert "NoSuchProperty" in str(error)
    assert ifs_sim.state.stats()["requests"]["GET CustomerOrderSet"] == 1


def _first_key(client: IfsClient, entity_set: EntitySet) -> str | None:
    records = client.iter_records(entity_set, Query(select=[entity_set.key], top=1), page_size=1)
    record = next(iter(records), None)
    return record.key if record is not None else None


def test_first_record_of_each_set_is_read_by_its_key(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=3)
    assert ifs_client.tokens.token()
    assert _first_key(ifs_client, CUSTOMERS) == "C00001"
    assert _first_key(ifs_client, ifs_client.orders) == order_keys(ifs_sim)[0]


def test_first_record_of_an_empty_installation(ifs_sim, ifs_client: IfsClient):
    assert _first_key(ifs_client, CUSTOMERS) is None
    assert _first_key(ifs_client, ifs_client.orders) is None


class _Secrets:
    """The vault's lookup, holding one secret (the real Vault is tested in test_vault.py)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.asked: list[tuple[str, str, str]] = []

    def get(self, tenant: str, system: str, name: str) -> str:
        self.asked.append((tenant, system, name))
        return self.secret


def test_for_tenant_reads_the_secret_and_shares_the_tenant_budget(ifs_sim):
    ifs_sim.state.seed(customers=2, orders=3)
    tenant = TenantConfig.model_validate(
        {
            "id": "acme",
            "ifs": {
                "base_url": ifs_sim.url,
                "namespace": ifs_sim.namespace,
                "client_id": ifs_sim.client_id,
                "requests_per_minute": 3,
                # Tokens are shared process-wide by (URL, client, scope, secret): a scope of
                # its own keeps another test's cached token out of this count.
                "scope": f"openid microprofile-jwt test-{uuid.uuid4().hex[:8]}",
            },
            "pipedrive": {"api_domain": "https://acme.pipedrive.com"},
        }
    )
    secrets = _Secrets(ifs_sim.client_secret)
    coordination = Coordination.from_url(None)
    first = IfsClient.for_tenant(tenant, vault=secrets, coordination=coordination)
    second = IfsClient.for_tenant(tenant, vault=secrets, coordination=coordination)
    assert secrets.asked == [("acme", "ifs", "client_secret")] * 2
    key = order_keys(ifs_sim)[0]
    first.get_order(key)
    second.get_order(key)
    first.get_order(key)
    with pytest.raises(RateLimited):
        second.get_order(key)  # the fourth request of the minute, whichever client sends it
    assert ifs_sim.state.stats()["tokens_issued"] == 1  # one cached token for the tenant


def test_clients_are_usable_from_many_threads(ifs_sim, ifs_client: IfsClient):
    ifs_sim.state.seed(customers=2, orders=20)
    keys = order_keys(ifs_sim)
    errors: list[Exception] = []

    def read(part: list[str]) -> None:
        try:
            for key in part:
                assert ifs_client.get_order(key).key == key
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=read, args=(keys[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ifs_sim.state.stats()["tokens_issued"] == 1


def test_an_entity_set_keyed_by_another_property_is_ordered_addressed_and_keyed_by_it(
    ifs_sim, ifs_client: IfsClient
):
    ifs_sim.state.configure(customer_key="CustomerNo")  # until the fixture's reset
    ifs_sim.state.seed(customers=5, orders=0)
    customers = EntitySet("CustomerHandling.svc", "CustomerInfoSet", "CustomerNo")
    records = list(ifs_client.iter_records(customers, Query(select=["Name"]), page_size=2))
    assert [r.key for r in records] == sorted(ifs_sim.state.keys(ifs_sim.state.customer_type))
    assert all(set(r.data) == {"Name", "CustomerNo"} for r in records)
    record = ifs_client.get_record(customers, records[2].key, select=["Name"])
    assert record.key == records[2].key and record.data["Name"] == records[2].data["Name"]
    with pytest.raises(RemoteError) as raised:
        list(ifs_client.iter_records(CUSTOMERS))  # the default key is not a property here
    assert raised.value.status == 400
