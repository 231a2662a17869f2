"""Live configuration: long-running processes follow the tenants file and the vault, no restart.

Workers, beat and the receiver each call `LiveConfig.refresh_if_stale` before work. At most
every `interval_s` seconds that costs one read of the tenants file (its sha256 digest) and
one grouped query of the credentials table (`credential_versions`); only when either changed
are tenants re-validated and the cached syncs (clients, token caches, Pipedrive layout) of
the tenants that changed dropped through `Runtime.serve_tenants`.

A file that no longer validates keeps the last good configuration of every tenant that is
broken now (a new valid tenant is still added, a new broken one is not served), and it is
reported on every check until fixed: a log line, `mlc_config_reload_errors_total`, and
`problems` for /readyz. One broken tenant never disables another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from connector import metrics
from connector.errors import ConfigError
from connector.tenants import TenantConfig, TenantsReading, read_tenants

if TYPE_CHECKING:
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

# Every process checks at most this often: a change is live within it (plus the time the
# next task or request takes to arrive), well inside the 30 s promised in the README.
DEFAULT_INTERVAL_S = 5.0


def merge_reading(
    serving: dict[str, TenantConfig], reading: TenantsReading
) -> tuple[dict[str, TenantConfig], dict[str | None, list[str]]]:
    """The tenants to serve after `reading`, and the problems to report.

    Valid tenants come from the reading. A tenant whose section is broken keeps the
    configuration it is served with now (and says so). A problem with the file as a whole
    (no `tenants:` mapping, unknown top-level key) removes nothing; otherwise a tenant no
    longer in the file is no longer served.
    """
    tenants = dict(reading.tenants)
    problems: dict[str | None, list[str]] = {}
    for tenant_id, found in reading.problems.items():
        kept = tenant_id is not None and tenant_id in serving
        if kept:
            assert tenant_id is not None
            tenants[tenant_id] = serving[tenant_id]
        note = (
            "keeping its last good configuration"
            if kept
            else "not served"
            if tenant_id is not None
            else "removing no tenant"
        )
        problems[tenant_id] = [*found, f"({note} until the file is fixed)"]
    if None in reading.problems:
        for tenant_id, config in serving.items():
            tenants.setdefault(tenant_id, config)
    return tenants, problems


class LiveConfig:
    """The owner of one process's view of the tenants file and the credential versions."""

    def __init__(
        self,
        runtime: Runtime,
        path: Path,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.path = Path(path)
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._loaded = False
        self._digest: str | None = None
        self._credentials: dict[str, str] | None = None
        self._serving: dict[str, TenantConfig] = {}
        self.problems: dict[str | None, list[str]] = {}
        # Bumped on every change that was applied: beat rebuilds its schedule when it moves.
        self.generation = 0

    @property
    def tenants(self) -> dict[str, TenantConfig]:
        return dict(self._serving)

    def credential_version(self, tenant_id: str) -> str | None:
        """The tenant's credential version stamp as last read (None: none read, or no secrets);
        caches of decrypted secrets (the receiver's) compare it to know when to read again."""
        return (self._credentials or {}).get(tenant_id)

    def messages(self) -> list[str]:
        return [message for found in self.problems.values() for message in found]

    def refresh_if_stale(self, max_age_s: float | None = None) -> bool:
        """Check for changes unless the last check is younger than `max_age_s` (default the
        interval); True when a change was applied. Other threads never wait for a check in
        progress, except for the first one (there is nothing to serve before it)."""
        age = self.interval_s if max_age_s is None else max_age_s
        if self._checked_at is not None and self._clock() - self._checked_at < age:
            return False
        if not self._lock.acquire(blocking=self._checked_at is None):
            return False
        try:
            if self._checked_at is not None and self._clock() - self._checked_at < age:
                return False
            return self._check()
        finally:
            self._lock.release()

    def _check(self) -> bool:
        self._checked_at = self._clock()
        credentials = self._read_credentials()
        try:
            reading: TenantsReading | None = read_tenants(self.path)
        except ConfigError as error:
            reading = None
            self._digest = None  # the file is compared afresh once it reads again
            self.problems = {None: [f"{error} (keeping every tenant as it was)"]}
        first = not self._loaded
        self._loaded = True
        file_changed = reading is not None and reading.digest != self._digest
        credentials_changed = credentials is not None and credentials != self._credentials
        changed: set[str] = set()
        if reading is not None and file_changed:
            tenants, self.problems = merge_reading(self._serving, reading)
            changed |= {
                tenant_id
                for tenant_id in set(tenants) | set(self._serving)
                if tenants.get(tenant_id) != self._serving.get(tenant_id)
            }
            self._serving = tenants
            self._digest = reading.digest
        if credentials is not None and credentials_changed:
            previous = self._credentials or {}
            # Only tenants of this file matter; the database may hold others' secrets.
            changed |= {
                tenant_id
                for tenant_id in self._serving
                if credentials.get(tenant_id) != previous.get(tenant_id)
            }
            self._credentials = credentials
        self._report()
        if first or changed:
            self.runtime.serve_tenants(self._serving, None if first else changed)
            self.generation += 1
            if not first:
                log.info("configuration changed: tenants %s", ", ".join(sorted(changed)))
            return True
        return False

    def _read_credentials(self) -> dict[str, str] | None:
        from connector.storage.vault import credential_versions

        try:
            return credential_versions(self.runtime.database)
        except Exception as error:  # a database outage must not stop serving the tenants
            log.warning("credential versions not read: %s", type(error).__name__)
            return None

    def _report(self) -> None:
        """One log line and one count per broken part, on every check until it is fixed."""
        for tenant_id, found in self.problems.items():
            metrics.count_config_reload_error(tenant_id)
            log.error(
                "tenants file %s: %s: %s",
                self.path,
                f"tenant {tenant_id}" if tenant_id else "the file",
                "; ".join(found),
            )
