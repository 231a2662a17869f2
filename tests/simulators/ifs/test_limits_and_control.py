"""Request budget (429 + Retry-After), fault injection and the `/_sim` control routes."""

from __future__ import annotations

import requests


def get(sim, headers):
    return requests.get(sim.orders_url, headers=headers, timeout=10)


def test_budget_per_client_gives_429_with_retry_after_then_recovers(ifs_sim):
    ifs_sim.state.configure(requests_per_minute=3)
    headers = ifs_sim.headers()
    assert [get(ifs_sim, headers).status_code for _ in range(3)] == [200, 200, 200]
    limited = get(ifs_sim, headers)
    assert limited.status_code == 429
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert limited.json()["error"]["code"]
    ifs_sim.state.advance_clock(retry_after + 0.5)
    assert get(ifs_sim, headers).status_code == 200
    assert ifs_sim.state.stats()["rate_limited"] == 1


def test_budget_is_counted_per_client(ifs_sim_factory):
    sim = ifs_sim_factory(clients={"a": "1", "b": "2"}, requests_per_minute=1)
    token_a = sim.token()
    sim.client_id, sim.client_secret = "b", "2"
    token_b = sim.token()
    assert get(sim, {"Authorization": f"Bearer {token_a}"}).status_code == 200
    assert get(sim, {"Authorization": f"Bearer {token_a}"}).status_code == 429
    assert get(sim, {"Authorization": f"Bearer {token_b}"}).status_code == 200


def test_token_endpoint_is_not_counted_against_the_budget(ifs_sim):
    ifs_sim.state.configure(requests_per_minute=1)
    for _ in range(3):
        ifs_sim.token()
    assert get(ifs_sim, ifs_sim.headers()).status_code == 200


def test_forced_429s(ifs_sim):
    response = requests.post(
        f"{ifs_sim.url}/_sim/faults", json={"force_429": 2, "retry_after_s": 7}, timeout=10
    )
    assert response.status_code == 200
    headers = ifs_sim.headers()
    first, second, third = (get(ifs_sim, headers) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["Retry-After"] == "7"


def test_error_and_timeout_faults(ifs_sim):
    requests.post(f"{ifs_sim.url}/_sim/faults", json={"error_rate": 1.0}, timeout=10)
    headers = ifs_sim.headers()
    overloaded = get(ifs_sim, headers)
    assert overloaded.status_code == 503
    assert overloaded.json()["error"]["code"]
    requests.post(
        f"{ifs_sim.url}/_sim/faults", json={"error_rate": 0, "timeout_rate": 1.0}, timeout=10
    )
    timed_out = get(ifs_sim, headers)
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "ODP_OPERATION_TIMEOUT"
    requests.post(f"{ifs_sim.url}/_sim/faults", json={"timeout_rate": 0}, timeout=10)
    assert get(ifs_sim, headers).status_code == 200


def test_fault_rates_are_reproducible_with_a_seed(ifs_sim):
    headers = ifs_sim.headers()

    def run() -> list[int]:
        requests.post(
            f"{ifs_sim.url}/_sim/faults", json={"error_rate": 0.5, "seed": 11}, timeout=10
        )
        return [get(ifs_sim, headers).status_code for _ in range(12)]

    first = run()
    assert first == run()
    assert set(first) == {200, 503}


def test_bad_fault_settings_are_refused(ifs_sim):
    for body in ({"error_rate": 2}, {"nonsense": 1}):
        response = requests.post(f"{ifs_sim.url}/_sim/faults", json=body, timeout=10)
        assert response.status_code == 400


def test_seed_reset_and_raw_get_over_http(ifs_sim):
    seeded = requests.post(
        f"{ifs_sim.url}/_sim/seed", json={"customers": 3, "orders": 4, "seed": 5}, timeout=10
    )
    assert seeded.json() == {"customers": 3, "orders": 4}
    raw = requests.get(f"{ifs_sim.url}/_sim/orders/C1000000004", timeout=10)
    assert raw.status_code == 200 and raw.json()["OrderNo"] == "C1000000004"
    assert requests.get(f"{ifs_sim.url}/_sim/orders/C1", timeout=10).status_code == 404
    assert requests.post(f"{ifs_sim.url}/_sim/reset", timeout=10).status_code == 200
    assert ifs_sim.state.stats()["orders"] == 0


def test_insert_records_including_ones_missing_required_fields(ifs_sim):
    customer = requests.post(
        f"{ifs_sim.url}/_sim/customers",
        json={"CustomerId": "C00077", "Name": None, "Country": "SE"},
        timeout=10,
    )
    assert customer.status_code == 201
    assert customer.json()["Name"] is None
    broken = requests.post(
        f"{ifs_sim.url}/_sim/orders",
        json={"record": {"OrderNo": "C1000000999", "TotalAmount": None}, "omit": ["CustomerNo"]},
        timeout=10,
    )
    assert broken.status_code == 201
    assert "CustomerNo" not in broken.json()
    served = requests.get(
        f"{ifs_sim.orders_url}(OrderNo='C1000000999')", headers=ifs_sim.headers(), timeout=10
    ).json()
    assert "CustomerNo" not in served and served["TotalAmount"] is None
    both = requests.post(
        f"{ifs_sim.url}/_sim/orders",
        json={"records": [{"CustomerNo": "C00077"}, {"CustomerNo": "C00077"}]},
        timeout=10,
    )
    assert [o["CustomerNo"] for o in both.json()["value"]] == ["C00077", "C00077"]
    bad = requests.post(f"{ifs_sim.url}/_sim/orders", json={"Nope": 1}, timeout=10)
    assert bad.status_code == 400


def test_stats_count_requests_per_route_and_method(ifs_sim):
    ifs_sim.state.seed(2, 2)
    headers = ifs_sim.headers()
    get(ifs_sim, headers)
    requests.get(f"{ifs_sim.orders_url}(OrderNo='C1000000001')", headers=headers, timeout=10)
    requests.get(ifs_sim.orders_url, timeout=10)
    stats = requests.get(f"{ifs_sim.url}/_sim/stats", timeout=10).json()
    assert stats["requests"]["GET CustomerOrderSet"] == 2
    assert stats["requests"]["GET CustomerOrderSet(key)"] == 1
    assert stats["requests"]["POST token"] == 1
    assert stats["unauthorized"] == 1
    assert stats["responses"]["200"] == 3


def test_app_seeds_from_settings(ifs_sim_factory):
    sim = ifs_sim_factory(seed_customers=2, seed_orders=3, seed=9)
    assert sim.state.stats()["orders"] == 3
