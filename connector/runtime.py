"""The composition root of the library: settings, tenants, database, vault, coordination, clients.

Workers, the webhook receiver and the CLI each build one Runtime per process and ask it
for what they need; nothing else reads environment variables or constructs clients.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from connector.settings import Settings
from connector.storage.database import Database
from connector.tenants import TenantConfig, get_tenant, load_tenants

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.ifs.client import IfsClient
    from connector.pipedrive.client import PipedriveClient
    from connector.storage.vault import Vault


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        tenants_path: Path | None = None,
        tenants: dict[str, TenantConfig] | None = None,
    ) -> None:
        self.settings = settings
        self._tenants_path = tenants_path or settings.tenants_file
        self._tenants = tenants

    @property
    def tenants(self) -> dict[str, TenantConfig]:
        if self._tenants is None:
            self._tenants = load_tenants(self._tenants_path)
        return self._tenants

    def tenant(self, tenant_id: str) -> TenantConfig:
        return get_tenant(self.tenants, tenant_id)

    @cached_property
    def database(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def vault(self) -> Vault:
        from connector.storage.vault import Vault

        return Vault(self.database, self.settings.key_list)

    @cached_property
    def coordination(self) -> Coordination:
        """Rate limiters and record locks: Redis when configured, else in-process."""
        from connector.coordination import Coordination

        return Coordination.from_url(self.settings.redis_url)

    def ifs_client(self, tenant_id: str) -> IfsClient:
        from connector.ifs.client import IfsClient

        tenant = self.tenant(tenant_id)
        return IfsClient.for_tenant(tenant, vault=self.vault, coordination=self.coordination)

    def pipedrive_client(self, tenant_id: str) -> PipedriveClient:
        from connector.pipedrive.client import PipedriveClient

        tenant = self.tenant(tenant_id)
        return PipedriveClient.for_tenant(tenant, vault=self.vault, coordination=self.coordination)

    def close(self) -> None:
        if "database" in self.__dict__:
            self.database.dispose()
