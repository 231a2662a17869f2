"""Fixtures for the Pipedrive client tests: Postgres-backed vault and tenant state, Redis
coordination, and a tenant pointed at the simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from cryptography.fernet import Fernet

from connector.coordination import Coordination
from connector.pipedrive.client import PipedriveClient
from connector.ratelimit import RedisRateLimiter
from connector.storage.database import Database
from connector.storage.models import Base
from connector.storage.tenant_state import DatabaseTenantState
from connector.storage.vault import Vault
from connector.tenants import TenantConfig


@pytest.fixture(scope="session")
def database(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    Base.metadata.create_all(db.engine)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def vault(database: Database) -> Vault:
    return Vault(database, [Fernet.generate_key().decode()])


@pytest.fixture
def tenant_state(database: Database) -> DatabaseTenantState:
    return DatabaseTenantState(database)


@pytest.fixture
def coordination(redis_url: str, redis_prefix: str) -> Iterator[Coordination]:
    client = redis.Redis.from_url(redis_url)
    yield Coordination(
        RedisRateLimiter(client, prefix=f"{redis_prefix}rl:"), redis=client, prefix=redis_prefix
    )
    client.close()


def make_tenant(api_domain: str, **pipedrive: object) -> TenantConfig:
    """A tenant with a unique id (tests share one database) reaching the simulator."""
    return TenantConfig.model_validate(
        {
            "id": f"t-{uuid.uuid4().hex[:10]}",
            "ifs": {"base_url": "http://127.0.0.1:9", "namespace": "unused"},
            "pipedrive": {"api_domain": api_domain, **pipedrive},
        }
    )


@pytest.fixture
def tenant(pipedrive_sim) -> TenantConfig:
    # Limits as high as the test simulator's, so that no test waits for burst tokens.
    return make_tenant(pipedrive_sim.url, burst_limit=1000, search_burst_limit=1000)


@pytest.fixture
def client(pipedrive_sim, tenant, vault, coordination) -> Iterator[PipedriveClient]:
    vault.set(tenant.id, "pipedrive", "api_token", pipedrive_sim.api_token)
    client = PipedriveClient.for_tenant(tenant, vault=vault, coordination=coordination)
    yield client
    client.close()
