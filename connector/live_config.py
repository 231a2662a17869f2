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

Each process also publishes the result of every check (`ConfigCheck`: role, host, pid, the
file's digest, its problems) to the deployment's shared coordination store, where it stays
current for a few check intervals; `status` and `/readyz` read every role's reports
(`config_checks`), so a tenants file that only a worker or beat sees broken (another host's
copy, a cron only Celery refuses) is reported all the same. `watch` checks on a timer too,
so an idle process still follows the file and keeps its report current.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector import metrics
from connector.errors import ConfigError
from connector.tenants import TenantConfig, TenantsReading, read_tenants

if TYPE_CHECKING:
    from connector.runtime import Runtime

log = logging.getLogger(__name__)

# Every process checks at most this often: a change is live within it (plus the time the
# next task or request takes to arrive), well inside the 30 s promised in the README.
DEFAULT_INTERVAL_S = 5.0
# A published check counts as current for this many intervals (at least REPORT_LIFETIME_S):
# a process that stopped checking (stopped, or hung) drops out of `status` and /readyz then.
REPORT_LIFETIME_INTERVALS = 4
REPORT_LIFETIME_S = 20.0


@dataclass(frozen=True)
class ConfigCheck:
    """One process's last check of the tenants file, as published for `status` and /readyz."""

    role: str
    host: str
    pid: int
    digest: str | None
    checked_at: float  # Unix time
    # [tenant (None: the file as a whole), messages] pairs: JSON has no None keys.
    problems: list[tuple[str | None, list[str]]] = field(default_factory=list)

    @property
    def process(self) -> str:
        return f"{self.role}:{self.host}:{self.pid}"

    @property
    def where(self) -> str:
        return f"{self.role} on {self.host} (pid {self.pid})"

    def messages(self) -> list[str]:
        return [message for _, found in self.problems for message in found]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> ConfigCheck:
        data = json.loads(text)
        problems = [(tenant, list(found)) for tenant, found in data.get("problems", [])]
        return cls(
            role=str(data["role"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            digest=data.get("digest"),
            checked_at=float(data["checked_at"]),
            problems=problems,
        )


def config_checks(runtime: Runtime) -> list[ConfigCheck]:
    """Every running process's last published check in this deployment (its queue), in a
    stable order; empty when the store cannot be read (the caller shows what it has)."""
    try:
        reports = runtime.coordination.config_checks(runtime.settings.queue)
    except Exception as error:  # a Redis outage must not break status or /readyz
        log.warning("configuration checks not read: %s", type(error).__name__)
        return []
    checks = []
    for report in reports:
        try:
            checks.append(ConfigCheck.from_json(report))
        except (ValueError, KeyError, TypeError):
            log.warning("a configuration check report is unreadable; ignored")
    return sorted(checks, key=lambda check: (check.role, check.host, check.pid))


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
        role: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.path = Path(path)
        self.interval_s = interval_s
        # worker, beat, receiver: a role publishes each check (None: this process does not).
        self.role = role
        self._watching: threading.Thread | None = None
        self._stop = threading.Event()
        # Problems this role finds beyond the file's validation (beat: a cron Celery refuses).
        self.role_problems: dict[str, list[str]] = {}
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
        return [message for found in self._all_problems().values() for message in found]

    def _all_problems(self) -> dict[str | None, list[str]]:
        problems = {tenant_id: list(found) for tenant_id, found in self.problems.items()}
        for tenant_id, found in self.role_problems.items():
            problems.setdefault(tenant_id, []).extend(found)
        return problems

    def note_role_problems(self, problems: dict[str, list[str]]) -> None:
        """Replace this role's own problems (reported with every check until they go)."""
        self.role_problems = {tenant_id: list(found) for tenant_id, found in problems.items()}
        self._publish()

    def watch(self) -> None:
        """Also check on a timer, from a daemon thread, so that an idle process follows the
        file and keeps its published report current. Call it after any fork (a thread does
        not survive one)."""
        if self._watching is not None and self._watching.is_alive():
            return
        self._stop.clear()
        self._watching = threading.Thread(target=self._watch, name="mlc-live-config", daemon=True)
        self._watching.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watching is not None:
            self._watching.join(timeout=5)
            self._watching = None

    def _watch(self) -> None:
        while True:
            try:
                self.refresh_if_stale()
            except Exception:  # the watcher must outlive any one failed check
                log.exception("configuration check failed")
            if self._stop.wait(self.interval_s):
                return

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
        self._publish()
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

    def _publish(self) -> None:
        """Publish this check for `status` and /readyz; an unreachable store is logged only."""
        if self.role is None:
            return
        check = ConfigCheck(
            role=self.role,
            host=socket.gethostname(),
            pid=os.getpid(),
            digest=self._digest,
            checked_at=time.time(),
            problems=list(self._all_problems().items()),
        )
        try:
            self.runtime.coordination.publish_config_check(
                self.runtime.settings.queue,
                check.process,
                json.dumps(check.as_dict()),
                ttl_s=max(self.interval_s * REPORT_LIFETIME_INTERVALS, REPORT_LIFETIME_S),
            )
        except Exception as error:
            log.warning("configuration check not published: %s", type(error).__name__)

    def _report(self) -> None:
        """One log line and one count per broken part, on every check until it is fixed."""
        for tenant_id, found in self._all_problems().items():
            metrics.count_config_reload_error(tenant_id)
            log.error(
                "tenants file %s: %s: %s",
                self.path,
                f"tenant {tenant_id}" if tenant_id else "the file",
                "; ".join(found),
            )
