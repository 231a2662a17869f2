"""The composition root of the library: settings, tenants, database, vault, coordination, clients.

Workers, the webhook receiver and the CLI each build one Runtime per process and ask it
for what they need; nothing else reads environment variables or constructs clients. The
Runtime also owns the process's caches (tenants, per-tenant syncs) and their one
replacement point, `serve_tenants`. A long-running role calls `go_live` once: from then on
its tenants come from a LiveConfig (connector.live_config) that follows the tenants file and
the vault, leniently, and `refresh_if_stale` before each piece of work picks changes up.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from connector.errors import UnknownTenantError
from connector.settings import Settings
from connector.storage.database import Database
from connector.tenants import TenantConfig, get_tenant, load_tenants

if TYPE_CHECKING:
    from connector.coordination import Coordination
    from connector.ifs.client import IfsClient
    from connector.live_config import LiveConfig
    from connector.pipedrive.client import PipedriveClient
    from connector.storage.vault import Vault
    from connector.sync.engine import TenantSync


# How often an unknown tenant id may make a live runtime re-read the tenants file.
UNKNOWN_TENANT_RECHECK_S = 1.0


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
        # Tenants given here (or served by a LiveConfig) have no file to re-read behind them.
        self._given_tenants = tenants
        self._tenants = tenants
        self._syncs: dict[str, TenantSync] = {}
        # Moves on with every `serve_tenants`: a sync built across one is not kept.
        self._served = 0
        self._lock = threading.Lock()
        self.live: LiveConfig | None = None

    def go_live(
        self, *, interval_s: float | None = None, role: str | None = None
    ) -> LiveConfig | None:
        """Follow the tenants file and the vault from now on (workers, beat, receiver); a
        `role` publishes each check for `status` and /readyz.

        Tenants given to the constructor have no file to follow: None then.
        """
        if self._given_tenants is not None and self.live is None:
            return None
        if self.live is None:
            from connector.live_config import DEFAULT_INTERVAL_S, LiveConfig

            self.live = LiveConfig(
                self,
                self._tenants_path,
                interval_s=DEFAULT_INTERVAL_S if interval_s is None else interval_s,
                role=role,
            )
        return self.live

    def refresh_if_stale(self, max_age_s: float | None = None) -> bool:
        """Pick up configuration changes if the last check is old enough; True when one was
        applied. Does nothing in a runtime that is not live (the CLI's)."""
        return self.live.refresh_if_stale(max_age_s) if self.live is not None else False

    def serve_tenants(
        self, tenants: dict[str, TenantConfig], changed: Collection[str] | None
    ) -> None:
        """Serve `tenants` from now on and drop the cached syncs of `changed` (None: all)."""
        with self._lock:
            self._given_tenants = dict(tenants)
            self._tenants = self._given_tenants
            self._served += 1
            if changed is None:
                self._syncs.clear()
            else:
                for tenant_id in changed:
                    self._syncs.pop(tenant_id, None)

    @property
    def tenants(self) -> dict[str, TenantConfig]:
        if self._tenants is None and self.live is not None:
            self.live.refresh_if_stale()  # the first check: lenient, and outside the lock
        with self._lock:
            if self._tenants is None:
                self._tenants = load_tenants(self._tenants_path)
            return self._tenants

    def tenant(self, tenant_id: str, *, recheck_unknown: bool = False) -> TenantConfig:
        """The tenant. With `recheck_unknown` (a webhook or a job naming it), one a live runtime
        does not know yet makes it look at the tenants file at once, at most once a second so
        that unknown names cannot make it read the file per request, before it is refused."""
        try:
            return get_tenant(self.tenants, tenant_id)
        except UnknownTenantError:
            if not recheck_unknown or not self.refresh_if_stale(UNKNOWN_TENANT_RECHECK_S):
                raise
        return get_tenant(self.tenants, tenant_id)

    def tenant_sync(self, tenant_id: str) -> TenantSync:
        """This process's TenantSync of one tenant, kept so that its clients and token caches
        serve every task until its configuration or credentials change (`serve_tenants`)."""
        # A live runtime's first check serves the tenants: let it run before the build below
        # reads them, or that first serving would count as a change made during the build.
        self.tenants  # noqa: B018
        with self._lock:
            sync = self._syncs.get(tenant_id)
            served = self._served
        if sync is not None:
            return sync
        from connector.sync.engine import TenantSync

        # Built outside the lock: it reads the tenants (which takes the lock) and the vault.
        sync = TenantSync(self, tenant_id)
        with self._lock:
            if self._served != served:
                # The configuration was replaced while this one was built from the old: it
                # serves the task that asked (which began before the change), and no other.
                return sync
            return self._syncs.setdefault(tenant_id, sync)

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
        """Stop following the configuration (its watcher thread ends) and close the pools."""
        if self.live is not None:
            # Else the thread keeps checking a file and a database this runtime let go of.
            self.live.stop_watching()
        if "database" in self.__dict__:
            self.database.dispose()
