"""Settings of the IFS Cloud simulator (realm, clients, token lifetime, budget, faults)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_clients() -> dict[str, str]:
    return {"ml-connector": "sim-ifs-secret"}


@dataclass(frozen=True)
class IfsSimSettings:
    """How one simulated IFS Cloud installation behaves.

    `namespace` is the IAM (Keycloak) realm in the token URL. Faults start as given here and
    can be changed at run time through `POST /_sim/faults`.
    """

    namespace: str = "ifsdemo"
    clients: dict[str, str] = field(default_factory=_default_clients)
    token_ttl_s: float = 180
    requests_per_minute: int = 1000
    latency_ms: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    fault_seed: int | None = None
    # Server-driven page size used when the client sends no `Prefer: odata.maxpagesize`;
    # None returns the whole result, as IFS does for small sets.
    default_page_size: int | None = None
    # The CustomerInfo key property: an installation where it is e.g. `CustomerNo` (customers
    # are then stored, keyed, ordered and addressed by that property instead of CustomerId).
    customer_key: str = "CustomerId"
    # How a stale If-Match is refused: real installations differ. 412 (the OData answer), or
    # e.g. 400 with `DATABASE_ERROR` (then the ORA-20114 "modified by another user" detail
    # Error_SYS.Record_Modified raises), or 409 with any code a test names.
    stale_etag_status: int = 412
    stale_etag_code: str = "ODP_PRECONDITION_FAILED"
    # The ORA number of that DATABASE_ERROR: 20114 (Error_SYS.Record_Modified) or 20113
    # (Error_SYS.Record_Locked: another session holds the row while it changes it).
    stale_etag_ora: int = 20114
    # Data seeded when the app is created (the demo and `ml-connector simulate ifs`).
    seed_customers: int = 0
    seed_orders: int = 0
    seed: int = 42
