"""IFS → Pipedrive sync operations: plan a run, and upsert one customer or one order.

Idempotent under at-least-once delivery: every upsert runs under a per-record lock,
matches through the id map first and Pipedrive search second, and records a create
intent before it POSTs, so a crash between POST and bookkeeping is repaired by a search
instead of becoming a duplicate.
"""

from __future__ import annotations

import logging
import string
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from connector.errors import (
    ConnectorError,
    RecordError,
    RemoteError,
    TransientError,
    is_transient,
    retry_after_s,
)
from connector.ifs.odata import Query
from connector.mapping import PipedriveLayout, changed_fields, map_customer, map_order
from connector.storage.audit import FAILED, IFS_TO_PIPEDRIVE, SKIPPED, Attempt, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER, IdMap, PushedState, content_hash

if TYPE_CHECKING:
    from connector.ifs.records import IfsRecord
    from connector.runtime import Runtime
    from connector.tenants import TenantConfig

log = logging.getLogger(__name__)

ENTITIES = (CUSTOMER, ORDER)
RETRYING = "retrying"
# Plan hint: the bulk index read at plan time holds no Pipedrive record for this key.
ABSENT = -1
SEARCHES_BEFORE_INDEX = 20


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass(frozen=True)
class RecordResult:
    """The outcome of one upsert attempt and the audit row that describes it."""

    outcome: Outcome
    attempt: Attempt


@dataclass(frozen=True)
class WorkItem:
    """One record that needs work, with the IFS snapshot the plan read."""

    entity: str
    key: str
    etag: str
    data: dict[str, Any]
    hint: int | None = None  # Pipedrive id from the bulk index, ABSENT, or None (unknown)


@dataclass
class Plan:
    """What one plan of one entity read and decided; `items` is filled by `TenantSync.plan`
    only (`plan_pages` hands the items out page by page instead of keeping them)."""

    tenant: str
    entity: str
    run_id: str
    items: list[WorkItem] = field(default_factory=list)
    queued: int = 0
    unchanged: int = 0
    read: int = 0


@dataclass(frozen=True)
class EntitySpec:
    """What differs between customers and orders, so that one code path serves both."""

    entity: str
    task: str
    key_property: Callable[[TenantConfig], str]
    pipedrive_kind: str  # organization | deal
    key_field: str  # logical custom field holding the IFS key


SPECS = {
    CUSTOMER: EntitySpec(
        CUSTOMER,
        "ml_connector.sync_customer",
        lambda t: t.customer_mapping.customer_id,
        "organization",
        "ifs_customer_id",
    ),
    ORDER: EntitySpec(
        ORDER,
        "ml_connector.sync_order",
        lambda t: t.order_mapping.order_no,
        "deal",
        "ifs_order_no",
    ),
}

_layouts: dict[str, PipedriveLayout] = {}
_layouts_lock = threading.Lock()


class TenantSync:
    """The sync of one tenant inside one process; cheap to keep and reuse across tasks."""

    def __init__(self, runtime: Runtime, tenant_id: str, *, read_only: bool = False) -> None:
        # read_only (dry runs): nothing is created in Pipedrive, not even custom fields.
        self.read_only = read_only
        self.runtime = runtime
        self.tenant = runtime.tenant(tenant_id)
        self.ifs = runtime.ifs_client(tenant_id)
        self.pipedrive = runtime.pipedrive_client(tenant_id)
        self.idmap = IdMap(runtime.database)
        self.audit = AuditLog(runtime.database)

    # -- Pipedrive layout -------------------------------------------------------------

    def layout(self) -> PipedriveLayout:
        """Custom field keys, pipeline and stages: provisioned once per tenant, then cached."""
        with _layouts_lock:
            cached = _layouts.get(self.tenant.id)
        if cached is not None:
            return cached
        if self.read_only:
            return self._read_only_layout()
        from connector.pipedrive.provisioning import ensure_layout
        from connector.storage.tenant_state import DatabaseTenantState

        layout = ensure_layout(
            self.pipedrive,
            self.tenant,
            DatabaseTenantState(self.runtime.database),
            coordination=self.runtime.coordination,
        )
        with _layouts_lock:
            _layouts[self.tenant.id] = layout
        return layout

    def _read_only_layout(self) -> PipedriveLayout:
        from connector.pipedrive.provisioning import ensure_layout
        from connector.storage.tenant_state import DatabaseTenantState

        return ensure_layout(
            self.pipedrive, self.tenant, DatabaseTenantState(self.runtime.database), create=False
        )

    # -- planning ---------------------------------------------------------------------

    def selected_properties(self, entity: str) -> tuple[str, ...]:
        """The IFS properties the mapping reads: the plan asks for these alone ($select), which
        keeps pages and queued snapshots small, and names a mistyped mapping at once (400)."""
        if entity == CUSTOMER:
            names = set(self.tenant.customer_mapping.model_dump().values())
        else:
            mapping = self.tenant.order_mapping
            names = {value for key, value in mapping.model_dump().items() if key != "title"}
            names |= {n for _, n, _, _ in string.Formatter().parse(mapping.title) if n}
        return tuple(sorted(names))

    def read_ifs(self, entity: str) -> Iterator[IfsRecord]:
        query = Query(select=self.selected_properties(entity))
        if entity == CUSTOMER:
            return self.ifs.iter_customers(query)
        return self.ifs.iter_orders(query)

    def pipedrive_index(self, entity: str) -> dict[str, int]:
        """IFS key → Pipedrive id of every record in Pipedrive that carries an IFS key."""
        spec = SPECS[entity]
        layout = self.layout()
        fields = layout.organization_fields if entity == CUSTOMER else layout.deal_fields
        key_field = fields[spec.key_field]
        records = (
            self.pipedrive.iter_organizations(custom_fields=[key_field])
            if entity == CUSTOMER
            else self.pipedrive.iter_deals(custom_fields=[key_field])
        )
        index: dict[str, int] = {}
        for record in records:
            value = (record.get("custom_fields") or {}).get(key_field)
            if value not in (None, ""):
                # Hand-made duplicates: the oldest record wins, consistently.
                index[str(value)] = min(index.get(str(value), record["id"]), record["id"])
        return index

    def plan(self, entity: str, *, full: bool = False, run_id: str | None = None) -> Plan:
        """Read IFS and list every record whose ETag or mapped content changed."""
        plan = Plan(self.tenant.id, entity, run_id or uuid.uuid4().hex)
        for page in self.plan_pages(plan, full=full):
            plan.items.extend(page)
        return plan

    def plan_pages(self, plan: Plan, *, full: bool = False) -> Iterator[list[WorkItem]]:
        """The records that need work, a page at a time as IFS is read; `plan` keeps count.

        Memory stays at one page of work items whatever the tenant's size.
        """
        entries = self.idmap.summaries(self.tenant.id, plan.entity)
        customers = self.idmap.summaries(self.tenant.id, CUSTOMER) if plan.entity == ORDER else {}
        layout = self.layout()
        key_property = SPECS[plan.entity].key_property(self.tenant)
        index: dict[str, int] | None = None
        unmatched = 0

        def with_hints(page: list[WorkItem]) -> list[WorkItem]:
            nonlocal index, unmatched
            unmatched += sum(1 for item in page if item.hint is None)
            # One paged read of Pipedrive replaces a search per record (searches cost 20
            # tokens and have their own low burst limit) once more than a handful are new.
            if index is None and (full or unmatched > SEARCHES_BEFORE_INDEX):
                index = self.pipedrive_index(plan.entity)
            if index is None:
                return page
            known = index
            return [
                item
                if item.hint is not None
                else replace(item, hint=self._hint(item, entries, known))
                for item in page
            ]

        page: list[WorkItem] = []
        for record in self.read_ifs(plan.entity):
            plan.read += 1
            key = str(record.data.get(key_property) or record.key)
            entry = entries.get(key)
            known_id = entry.pipedrive_id if entry is not None else None
            if not full and known_id is not None and entry is not None:
                try:
                    payload = self._payload(plan.entity, record.data, layout, customers)
                except RecordError:
                    payload = None
                if (
                    payload is not None
                    and entry.etag == record.etag
                    and entry.content_hash == content_hash(payload)
                ):
                    plan.unchanged += 1
                    continue
            page.append(WorkItem(plan.entity, key, record.etag, dict(record.data), known_id))
            if len(page) >= self.tenant.ifs.page_size:
                plan.queued += len(page)
                yield with_hints(page)
                page = []
        if page:
            plan.queued += len(page)
            yield with_hints(page)

    @staticmethod
    def _hint(item: WorkItem, entries: dict[str, PushedState], index: dict[str, int]) -> int | None:
        if item.key in index:
            return index[item.key]
        # Absent from Pipedrive: create without a search, unless an earlier attempt left a
        # create intent (its POST may have landed after the index was read): search then.
        return ABSENT if item.key not in entries else None

    def _payload(
        self,
        entity: str,
        data: dict[str, Any],
        layout: PipedriveLayout,
        customers: dict[str, PushedState] | None = None,
    ) -> dict[str, Any] | None:
        if entity == CUSTOMER:
            return map_customer(self.tenant, data, layout)
        customer_no = str(data.get(self.tenant.order_mapping.customer_no) or "")
        entry = (customers or {}).get(customer_no)
        if entry is None or entry.pipedrive_id is None:
            return None
        return map_order(self.tenant, data, layout, entry.pipedrive_id)

    # -- upserts ----------------------------------------------------------------------

    def sync_record(
        self,
        entity: str,
        key: str,
        *,
        snapshot: dict[str, Any] | None = None,
        hint: int | None = None,
        full: bool = False,
        attempt: int = 1,
        final_attempt: bool = True,
        replay_of: int | None = None,
        run_id: str | None = None,
        dry_run: bool = False,
    ) -> RecordResult:
        """Upsert one record into Pipedrive and leave one audit row for this attempt.

        Raises TransientError when the attempt should be retried later.
        """
        spec = SPECS[entity]
        audit = Attempt(
            tenant=self.tenant.id,
            direction=IFS_TO_PIPEDRIVE,
            entity=entity,
            record_key=key,
            replay_task=spec.task,
            replay_args={"tenant": self.tenant.id, "key": key},
            replay_of=replay_of,
            correlation_id=run_id,
            attempt=attempt,
        )
        before = (self.ifs.http.requests_sent, self.pipedrive.requests_sent)
        try:
            with self.runtime.coordination.lock(f"record:{self.tenant.id}:{entity}:{key}"):
                outcome = self._upsert(spec, key, snapshot, hint, full, audit, dry_run)
        except RecordError as error:
            audit.status, audit.operation, audit.error = FAILED, "map", str(error)
            outcome = Outcome.FAILED
        except RemoteError as error:
            audit.status, audit.error = FAILED, str(error)
            audit.response_summary = {"status": error.status, "body": (error.body or "")[:500]}
            if error.retryable and not final_attempt:
                audit.status = RETRYING
            outcome = Outcome.FAILED
            if error.retryable and not final_attempt:
                self._write(audit, before)
                raise TransientError(str(error), error.retry_after_s) from error
        except ConnectorError as error:  # rate limit exhausted, lock timeout, vault …
            audit.status, audit.error = FAILED, f"{type(error).__name__}: {error}"
            outcome = Outcome.FAILED
            if is_transient(error) and not final_attempt:
                audit.status = RETRYING
                self._write(audit, before)
                raise TransientError(str(error), retry_after_s(error)) from error
        if not dry_run:
            self._write(audit, before)
        return RecordResult(outcome, audit)

    def _write(self, audit: Attempt, before: tuple[int, int]) -> None:
        summary = dict(audit.response_summary or {})
        summary["requests"] = {
            "ifs": self.ifs.http.requests_sent - before[0],
            "pipedrive": self.pipedrive.requests_sent - before[1],
        }
        audit.response_summary = summary
        self.audit.write(audit)

    def _upsert(
        self,
        spec: EntitySpec,
        key: str,
        snapshot: dict[str, Any] | None,
        hint: int | None,
        full: bool,
        audit: Attempt,
        dry_run: bool,
    ) -> Outcome:
        tenant = self.tenant.id
        layout = self.layout()
        if snapshot is None:
            record = self._read_one(spec.entity, key)
            etag, data = record.etag, dict(record.data)
        else:
            etag, data = snapshot["etag"], snapshot["data"]
        if spec.entity == CUSTOMER:
            payload = map_customer(self.tenant, data, layout)
        else:
            organization = self._organization_for(data, dry_run, audit.correlation_id)
            payload = map_order(self.tenant, data, layout, organization)
        digest = content_hash(payload)
        entry = self.idmap.get(tenant, spec.entity, key)
        pipedrive_id = entry.pipedrive_id if entry else None
        if pipedrive_id is None:
            pipedrive_id = self._find_existing(spec, key, layout, entry is not None, hint)
        audit.request_summary = {"etag": etag}

        if pipedrive_id is None:
            audit.operation = "create"
            if dry_run:
                audit.request_summary["payload"] = payload
                return Outcome.CREATED
            # The intent row makes a crash after the POST visible to the next attempt.
            self.idmap.save(tenant, spec.entity, key, etag="")
            created = self._create(spec, payload)
            self.idmap.save(
                tenant, spec.entity, key, pipedrive_id=created, etag=etag, payload=payload
            )
            audit.response_summary = {"pipedrive_id": created}
            return Outcome.CREATED

        previous = entry.last_payload if entry and entry.pipedrive_id == pipedrive_id else None
        if full:
            previous = self._current(spec, pipedrive_id)
        if previous is not None and not full and entry and entry.content_hash == digest:
            audit.skip("unchanged", "mapped content unchanged since the last push")
            if not dry_run:
                self.idmap.save(tenant, spec.entity, key, etag=etag)
            return Outcome.UNCHANGED
        changes = changed_fields(previous, payload)
        audit.operation = "update"
        audit.request_summary["changes"] = sorted(changes)
        if not changes:
            audit.skip("unchanged", "Pipedrive already holds the mapped content")
            if not dry_run:
                self.idmap.save(
                    tenant, spec.entity, key, pipedrive_id=pipedrive_id, etag=etag, payload=payload
                )
            return Outcome.UNCHANGED
        if dry_run:
            audit.request_summary["payload"] = changes
            return Outcome.UPDATED
        self._update(spec, pipedrive_id, changes)
        self.idmap.save(
            tenant, spec.entity, key, pipedrive_id=pipedrive_id, etag=etag, payload=payload
        )
        audit.response_summary = {"pipedrive_id": pipedrive_id}
        return Outcome.UPDATED

    def _read_one(self, entity: str, key: str) -> IfsRecord:
        select = self.selected_properties(entity)
        if entity == CUSTOMER:
            return self.ifs.get_customer(key, select=select)
        return self.ifs.get_order(key, select=select)

    def _organization_for(self, order: dict[str, Any], dry_run: bool, run_id: str | None) -> int:
        """The organization id of the order's customer, syncing the customer first if new."""
        customer_no = order.get(self.tenant.order_mapping.customer_no)
        if not customer_no:
            order_no = order.get(self.tenant.order_mapping.order_no)
            raise RecordError(
                f"IFS order {order_no}: required property "
                f"{self.tenant.order_mapping.customer_no!r} is missing or empty"
            )
        entry = self.idmap.get(self.tenant.id, CUSTOMER, str(customer_no))
        if entry is not None and entry.pipedrive_id is not None:
            return entry.pipedrive_id
        if dry_run:
            return 0
        result = self.sync_record(CUSTOMER, str(customer_no), final_attempt=False, run_id=run_id)
        entry = self.idmap.get(self.tenant.id, CUSTOMER, str(customer_no))
        if result.outcome is Outcome.FAILED or entry is None or entry.pipedrive_id is None:
            raise RecordError(f"customer {customer_no} could not be synced first (see its audit)")
        return entry.pipedrive_id

    def _find_existing(
        self,
        spec: EntitySpec,
        key: str,
        layout: PipedriveLayout,
        had_intent: bool,
        hint: int | None,
    ) -> int | None:
        """Adopt a Pipedrive record that already carries this IFS key (made by hand, or by a
        crashed earlier attempt), so that it is updated rather than duplicated."""
        if hint is not None and hint != ABSENT and not had_intent:
            return hint
        if hint == ABSENT and not had_intent:
            return None
        fields = layout.organization_fields if spec.entity == CUSTOMER else layout.deal_fields
        key_field = fields[spec.key_field]
        search = (
            self.pipedrive.search_organizations
            if spec.entity == CUSTOMER
            else self.pipedrive.search_deals
        )
        candidates = sorted(int(item["id"]) for item in search(key))
        for candidate in candidates:
            current = self._current(spec, candidate)
            if str((current.get("custom_fields") or {}).get(key_field)) == key:
                return candidate
        return None

    def _current(self, spec: EntitySpec, pipedrive_id: int) -> dict[str, Any]:
        if spec.entity == CUSTOMER:
            return self.pipedrive.get_organization(pipedrive_id)
        return self.pipedrive.get_deal(pipedrive_id)

    def _create(self, spec: EntitySpec, payload: dict[str, Any]) -> int:
        if spec.entity == CUSTOMER:
            return int(self.pipedrive.create_organization(payload)["id"])
        return int(self.pipedrive.create_deal(payload)["id"])

    def _update(self, spec: EntitySpec, pipedrive_id: int, changes: dict[str, Any]) -> None:
        if spec.entity == CUSTOMER:
            self.pipedrive.update_organization(pipedrive_id, changes)
        else:
            self.pipedrive.update_deal(pipedrive_id, changes)


def plan_audit(plan: Plan) -> Attempt:
    """The audit row a plan leaves: what it read, queued and skipped (for progress and status)."""
    return Attempt(
        tenant=plan.tenant,
        direction=IFS_TO_PIPEDRIVE,
        entity=plan.entity,
        record_key="*",
        operation="plan",
        status=SKIPPED if not plan.queued else "succeeded",
        correlation_id=plan.run_id,
        response_summary={
            "read": plan.read,
            "queued": plan.queued,
            "unchanged": plan.unchanged,
        },
    )
