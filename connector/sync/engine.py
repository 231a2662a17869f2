"""IFS → Pipedrive sync engine: plan a run of one entity, and upsert one record, for any
entity spec (connector.sync.specs); nothing here knows which entity it is moving.

Idempotent under at-least-once delivery: every upsert runs under a per-record lock and
matches through the id map first and Pipedrive second. A create whose attempt may not be
the record's first (see `_earlier_attempt`) searches Pipedrive before it POSTs, so a crash
between an earlier POST and its bookkeeping is repaired by a search instead of becoming a
duplicate. What tells an attempt that: for a record the dispatcher released, its message
(a retry, a redelivery) and the stored work items of the record (one released and never
finished is the trace a crash leaves); for any other attempt, a create intent in the id
map committed before its POST (nothing else would be left to tell).
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
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
from connector.ifs.client import is_not_found
from connector.ifs.odata import Query
from connector.pipedrive.client import is_gone
from connector.ratelimit import RateLimited
from connector.storage.audit import (
    FAILED,
    IFS_TO_PIPEDRIVE,
    PIPEDRIVE_TO_IFS,
    RETRYING,
    SKIPPED,
    Attempt,
    AuditLog,
)
from connector.storage.idmap import IdMap, PushedState, content_hash
from connector.storage.models import utcnow
from connector.storage.work_items import WorkItems
from connector.sync.lifecycle import NOUN, Followed, LinkChange, follow_gone, record_lock
from connector.sync.mapping import PipedriveLayout, changed_fields
from connector.sync.specs import SPECS, EntitySpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from connector.ifs.records import IfsRecord
    from connector.runtime import Runtime
    from connector.storage.models import IdMapEntry

log = logging.getLogger(__name__)

# Plan hint: the bulk index read at plan time holds no Pipedrive record for this key.
ABSENT = -1
SEARCHES_BEFORE_INDEX = 20


# Clock skew between this host and Pipedrive, when listing records updated since an intent.
LIST_MARGIN = timedelta(minutes=2)
# How far back a repeated attempt whose work item is gone lists records (its message came
# back within the broker's visibility timeout or the task retry policy's waits).
REPEAT_LOOKBACK = timedelta(hours=1)


class _ParentTombstoned(Exception):
    """The record's parent was deleted in Pipedrive and is respected: nothing to attach to."""


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
    pipedrive_id: int | None = None  # the record's Pipedrive id once the attempt is done


@dataclass
class _Bookkeeping:
    """What one attempt learnt and will write with its audit row, in one transaction."""

    entries: dict[tuple[str, str], IdMapEntry] = field(default_factory=dict)
    saves: list[dict[str, Any]] = field(default_factory=list)
    pipedrive_id: int | None = None
    work_item: int | None = None  # the stored item the dispatcher released this attempt for
    # The attempt's message says an earlier attempt may have run (a retry, a redelivery, a
    # replay, a re-release of its work item).
    repeated: bool = False
    # A create was sent and its answer is not recorded yet: an attempt that ends without it
    # leaves the create intent with its audit row.
    create_sent: tuple[str, str] | None = None

    def save(self, entity: str, key: str, **changes: Any) -> None:
        """An id-map change to commit with the attempt's audit row."""
        self.saves.append({"entity": entity, "ifs_key": key, **changes})
        if changes.get("pipedrive_id") is not None:
            self.pipedrive_id = int(changes["pipedrive_id"])


@dataclass(frozen=True)
class WorkItem:
    """One record that needs work, with the IFS snapshot the plan read."""

    entity: str
    key: str
    etag: str
    data: dict[str, Any]
    hint: int | None = None  # Pipedrive id from the bulk index, ABSENT, or None (unknown)
    missing: bool = False  # linked, but the plan's complete read of IFS did not return it

    @property
    def snapshot(self) -> dict[str, Any] | None:
        """What the upsert is handed: None for a missing record, which the upsert reads by
        its key, so that only a 404 there (not a shifting $skip page) counts as gone."""
        return None if self.missing else {"etag": self.etag, "data": self.data}


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
    tombstoned: int = 0  # left alone: deleted in Pipedrive, policy respect
    missing: int = 0  # linked but not returned by IFS: queued to confirm and apply on_ifs_missing


class TenantSync:
    """The sync of one tenant inside one process; cheap to keep and reuse across tasks.

    It owns what is worth keeping between records: the clients (with their token caches)
    and the tenant's Pipedrive layout, read once per instance. Build a new instance to see
    a changed layout or tenants file.
    """

    def __init__(self, runtime: Runtime, tenant_id: str, *, read_only: bool = False) -> None:
        # read_only (dry runs): nothing is created in Pipedrive, not even custom fields.
        self.read_only = read_only
        self.runtime = runtime
        self.tenant = runtime.tenant(tenant_id)
        self.ifs = runtime.ifs_client(tenant_id)
        self.pipedrive = runtime.pipedrive_client(tenant_id)
        self.idmap = IdMap(runtime.database)
        self.audit = AuditLog(runtime.database)
        self._layout: PipedriveLayout | None = None
        self._layout_lock = threading.Lock()

    # -- Pipedrive layout -------------------------------------------------------------

    def layout(self) -> PipedriveLayout:
        """Custom field keys, pipeline and stages: provisioned (or, read-only, looked up) on
        first use, then kept for the life of this instance."""
        with self._layout_lock:
            if self._layout is None:
                self._layout = self._read_layout()
            return self._layout

    def _read_layout(self) -> PipedriveLayout:
        from connector.pipedrive.provisioning import ensure_layout
        from connector.storage.tenant_state import DatabaseTenantState

        state = DatabaseTenantState(self.runtime.database)
        if self.read_only:
            return ensure_layout(self.pipedrive, self.tenant, state, create=False)
        return ensure_layout(
            self.pipedrive, self.tenant, state, coordination=self.runtime.coordination
        )

    # -- planning ---------------------------------------------------------------------

    def read_ifs(self, spec: EntitySpec) -> Iterator[IfsRecord]:
        """Every record of the entity, with only the properties its mapping reads ($select:
        keeps pages and queued snapshots small, and names a mistyped mapping at once, 400)."""
        query = Query(select=spec.properties(self.tenant))
        return self.ifs.iter_records(spec.ifs_set(self.tenant), query)

    def pipedrive_index(self, spec: EntitySpec) -> dict[str, int]:
        """IFS key → Pipedrive id of every record in Pipedrive that carries an IFS key
        (archived ones included: they are present, never to be created again)."""
        key_field = spec.fields(self.layout())[spec.key_field]
        index: dict[str, int] = {}
        records: Iterable[dict[str, Any]] = self.pipedrive.iter_records(
            spec.resource, custom_fields=[key_field]
        )
        if spec.lists_archived:
            archived = self.pipedrive.iter_archived_deals(custom_fields=[key_field])
            records = itertools.chain(records, archived)
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
        spec = SPECS[plan.entity]
        entries = self.idmap.summaries(self.tenant.id, spec.entity)
        parents = self.idmap.summaries(self.tenant.id, spec.parent.entity) if spec.parent else {}
        layout = self.layout()
        index: dict[str, int] | None = None
        unmatched = 0

        def with_hints(page: list[WorkItem]) -> list[WorkItem]:
            nonlocal index, unmatched
            unmatched += sum(1 for item in page if item.hint is None)
            # One paged read of Pipedrive replaces a search per record (searches cost 20
            # tokens and have their own low burst limit) once more than a handful are new.
            if index is None and (full or unmatched > SEARCHES_BEFORE_INDEX):
                index = self.pipedrive_index(spec)
            if index is None:
                return page
            known = index
            return [
                item
                if item.hint is not None
                else replace(item, hint=self._hint(item, entries, known))
                for item in page
            ]

        # Linked records the read has not returned (yet): what is left at the end is missing.
        unseen = {
            key
            for key, state in entries.items()
            if state.pipedrive_id is not None and not state.tombstoned and not state.ifs_missing
        }
        page: list[WorkItem] = []
        for record in self.read_ifs(spec):
            plan.read += 1
            key = record.key
            unseen.discard(key)
            entry = entries.get(key)
            if entry is not None and entry.tombstoned:
                # Respected delete: the one audit row saying why was written when it happened.
                plan.unchanged += 1
                plan.tombstoned += 1
                continue
            known_id = entry.pipedrive_id if entry is not None else None
            # A record back in IFS after it went missing is queued: its mark goes, and a deal
            # closed meanwhile is brought back to what IFS says.
            if not full and known_id is not None and entry is not None and not entry.ifs_missing:
                try:
                    payload = self._planned_payload(spec, record.data, layout, parents)
                except RecordError:
                    payload = None
                if (
                    payload is not None
                    and entry.etag == record.etag
                    and entry.content_hash == content_hash(payload)
                ):
                    plan.unchanged += 1
                    continue
            page.append(WorkItem(spec.entity, key, record.etag, dict(record.data), known_id))
            if len(page) >= self.tenant.ifs.page_size:
                plan.queued += len(page)
                yield with_hints(page)
                page = []
        # The read got to the end (an error raises before this): each linked record it did not
        # return is read once more by its key, and its upsert applies on_ifs_missing.
        for key in sorted(unseen):
            plan.missing += 1
            page.append(WorkItem(spec.entity, key, "", {}, entries[key].pipedrive_id, missing=True))
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

    def _planned_payload(
        self,
        spec: EntitySpec,
        data: dict[str, Any],
        layout: PipedriveLayout,
        parents: dict[str, PushedState],
    ) -> dict[str, Any] | None:
        """What the upsert would push, or None when its parent is not in Pipedrive yet."""
        parent_id: int | None = None
        if spec.parent is not None:
            entry = parents.get(str(data.get(spec.parent.key_property(self.tenant)) or ""))
            if entry is None or entry.pipedrive_id is None:
                return None
            parent_id = entry.pipedrive_id
        return spec.map(self.tenant, data, layout, parent_id)

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
        replay_of: int | None = None,
        run_id: str | None = None,
        dry_run: bool = False,
        work_item: int | None = None,
        redelivered: bool = False,
    ) -> RecordResult:
        """Upsert one record into Pipedrive and leave one audit row for this attempt.

        `work_item`: the stored item the dispatcher released this attempt for
        (connector.dispatch); it is deleted in the transaction of the attempt's final audit
        row, never on a transient ending (the caller gives it back). A create of such a
        record commits no intent before its POST: the item stays released and unfinished
        if the attempt dies, and every later attempt is told so (`_earlier_attempt`).

        `attempt` > 1, `redelivered` (the broker delivered the message before) and
        `replay_of` say that an earlier attempt of the record may have run.

        A transient failure (rate limit, lock, a remote's 429/5xx) leaves a "retrying" row
        and raises TransientError carrying that row's id (`audit_id`): the caller decides
        whether to retry, or to mark the row failed. Other failures leave a "failed" row and
        return Outcome.FAILED.
        """
        spec = SPECS[entity]
        audit = Attempt(
            tenant=self.tenant.id,
            direction=IFS_TO_PIPEDRIVE,
            entity=spec.entity,
            record_key=key,
            replay_task=spec.job,
            replay_args={"tenant": self.tenant.id, "key": key},
            replay_of=replay_of,
            correlation_id=run_id,
            attempt=attempt,
        )
        before = (self.ifs.http.requests_sent, self.pipedrive.requests_sent)
        books = _Bookkeeping(
            work_item=work_item,
            repeated=attempt > 1 or redelivered or replay_of is not None,
        )
        unsure: _Bookkeeping | None = None  # what an attempt that fails writes with its row
        try:
            with self.runtime.coordination.lock(record_lock(self.tenant.id, spec.entity, key)):
                outcome = self._upsert(spec, key, snapshot, hint, full, audit, dry_run, books)
                if not dry_run:
                    # Under the lock: the id map and the audit row commit together, before
                    # another attempt of the record may read the id map.
                    self._write(audit, before, books, finished=work_item)
                return RecordResult(outcome, audit, books.pipedrive_id)
        except RecordError as error:
            audit.status, audit.operation, audit.error = FAILED, "map", str(error)
            outcome = Outcome.FAILED
            unsure = _unsure(books, error)
        except ConnectorError as error:  # remote errors, rate limit, lock timeout, vault …
            unsure = _unsure(books, error)
            if isinstance(error, RemoteError):
                audit.error = str(error)
                audit.response_summary = {
                    "status": error.status,
                    "body": (error.body or "")[:500],
                }
            else:
                audit.error = f"{type(error).__name__}: {error}"
            outcome = Outcome.FAILED
            audit.status = RETRYING if is_transient(error) else FAILED
            if audit.status == RETRYING:
                audit_id = None if dry_run else self._write(audit, before, unsure)
                raise TransientError(str(error), retry_after_s(error), audit_id=audit_id) from error
        if not dry_run:
            self._write(audit, before, unsure, finished=work_item)
        return RecordResult(outcome, audit)

    def _write(
        self,
        audit: Attempt,
        before: tuple[int, int],
        books: _Bookkeeping | None = None,
        *,
        finished: int | None = None,
    ) -> int:
        """The attempt's audit row, the id-map changes it made and the end of its work item
        (`finished`), in one transaction."""
        summary = dict(audit.response_summary or {})
        summary["requests"] = {
            "ifs": self.ifs.http.requests_sent - before[0],
            "pipedrive": self.pipedrive.requests_sent - before[1],
        }
        audit.response_summary = summary
        saves = books.saves if books is not None else []

        def write(session: Session) -> int:
            for save in saves:
                self.idmap.save(self.tenant.id, session=session, **save)
            if finished is not None:
                WorkItems(self.runtime.database).finish(finished, session=session)
            return self.audit.write(audit, session=session)

        return self.runtime.database.transaction(write)

    def _upsert(
        self,
        spec: EntitySpec,
        key: str,
        snapshot: dict[str, Any] | None,
        hint: int | None,
        full: bool,
        audit: Attempt,
        dry_run: bool,
        books: _Bookkeeping,
    ) -> Outcome:
        tenant = self.tenant.id
        layout = self.layout()
        if snapshot is None:
            try:
                record = self.ifs.get_record(
                    spec.ifs_set(self.tenant), key, select=spec.properties(self.tenant)
                )
            except RemoteError as error:
                if not is_not_found(error):
                    raise
                return self._ifs_missing(spec, key, audit, dry_run)
            etag, data = record.etag, dict(record.data)
        else:
            etag, data = snapshot["etag"], snapshot["data"]
        # One read of the id map for the record and its parent, under the record's lock.
        wanted = [(spec.entity, key)]
        if spec.parent is not None:
            parent_key = str(data.get(spec.parent.key_property(self.tenant)) or "")
            if parent_key:
                wanted.append((spec.parent.entity, parent_key))
        books.entries = self.idmap.get_many(tenant, wanted)
        entry = books.entries.get((spec.entity, key))
        audit.request_summary = {"etag": etag}
        if entry is not None and entry.ifs_missing_at is not None and not dry_run:
            self.idmap.mark_ifs_missing(tenant, spec.entity, key, False)  # IFS has it again
        if entry is not None and entry.tombstoned_at is not None:
            audit.request_summary["pipedrive_id"] = entry.pipedrive_id
            audit.skip("tombstoned", f"not written: {entry.tombstone_reason}")
            return Outcome.UNCHANGED
        try:
            parent_id = self._parent_id(spec, key, data, dry_run, audit.correlation_id, books)
        except _ParentTombstoned as tombstoned:
            audit.skip("tombstoned", str(tombstoned))
            return Outcome.UNCHANGED
        payload = spec.map(self.tenant, data, layout, parent_id)
        pipedrive_id = entry.pipedrive_id if entry else None
        if pipedrive_id is None:
            earlier = self._earlier_attempt(spec, key, entry, books)
            pipedrive_id = self._find_existing(spec, key, layout, hint, earlier)

        if pipedrive_id is not None:
            try:
                return self._update(
                    spec, key, entry, pipedrive_id, etag, payload, full, audit, dry_run, books
                )
            except RemoteError as error:
                linked = entry is not None and entry.pipedrive_id == pipedrive_id
                # A dry run meets a 404 on the reads of --full; it reports what the lifecycle
                # policy would do, as a real run would do it.
                if not is_gone(error) or self._exists(spec, pipedrive_id):
                    raise
                if not linked:  # a hint or search hit deleted meanwhile: not ours to mourn
                    pipedrive_id = None
                else:
                    followed = self._follow_gone(spec, key, layout, pipedrive_id, audit, dry_run)
                    if followed.change is LinkChange.TOMBSTONED:
                        audit.skip("tombstoned", followed.reason)
                        return Outcome.UNCHANGED
                    if not dry_run:
                        entry = self.idmap.get(tenant, spec.entity, key)
                    pipedrive_id = followed.survivor_id
                if pipedrive_id is not None:
                    return self._update(
                        spec, key, entry, pipedrive_id, etag, payload, full, audit, dry_run, books
                    )

        audit.operation = "create"
        if dry_run:
            audit.request_summary["payload"] = payload
            return Outcome.CREATED
        if books.work_item is None:
            # Nothing stored says that this attempt ran: the intent row makes a crash after
            # the POST visible to the next attempt, the one write that cannot wait for the
            # attempt's transaction. (A released record's work item says it already.)
            self.idmap.save(tenant, spec.entity, key, etag="")
        books.create_sent = (spec.entity, key)
        created = int(self.pipedrive.create(spec.resource, payload)["id"])
        books.create_sent = None
        books.save(spec.entity, key, pipedrive_id=created, etag=etag, payload=payload)
        audit.response_summary = {"pipedrive_id": created}
        return Outcome.CREATED

    def _update(
        self,
        spec: EntitySpec,
        key: str,
        entry: IdMapEntry | None,
        pipedrive_id: int,
        etag: str,
        payload: dict[str, Any],
        full: bool,
        audit: Attempt,
        dry_run: bool,
        books: _Bookkeeping,
    ) -> Outcome:
        """Bring an existing Pipedrive record to `payload`, writing only what differs and
        leaving sales-owned fields alone unless IFS changed them (RemoteError 404: gone)."""
        linked = entry is not None and entry.pipedrive_id == pipedrive_id
        written = entry.last_payload if entry is not None and linked else None
        if (
            linked
            and not full
            and entry is not None
            and entry.content_hash == content_hash(payload)
        ):
            audit.skip("unchanged", "mapped content unchanged since the last push")
            books.pipedrive_id = pipedrive_id
            if not dry_run:
                books.save(spec.entity, key, etag=etag)
            return Outcome.UNCHANGED
        # A relinked record (content hash cleared) holds what someone else left there.
        archived = False
        if full or (linked and entry is not None and entry.content_hash is None):
            remote = self.pipedrive.get(spec.resource, pipedrive_id)
            archived = bool(remote.get("is_archived"))
            changes = _owned_changes(spec, changed_fields(remote, payload), payload, written)
        else:
            changes = changed_fields(written, payload)
        audit.operation = "update"
        summary = audit.request_summary = audit.request_summary or {}
        summary["changes"] = sorted(changes)
        if archived:
            summary["archived"] = True  # present all the same; `audit history` says so
        if not changes:
            audit.skip("unchanged", "Pipedrive already holds the mapped content")
            books.pipedrive_id = pipedrive_id
            if not dry_run:
                books.save(spec.entity, key, pipedrive_id=pipedrive_id, etag=etag, payload=payload)
            return Outcome.UNCHANGED
        if dry_run:
            summary["payload"] = changes
            return Outcome.UPDATED
        self.pipedrive.update(spec.resource, pipedrive_id, changes)
        books.save(spec.entity, key, pipedrive_id=pipedrive_id, etag=etag, payload=payload)
        audit.response_summary = {"pipedrive_id": pipedrive_id}
        return Outcome.UPDATED

    def follow_deleted(self, entity: str, key: str, gone_id: int, *, how: str) -> Followed | None:
        """A linked record Pipedrive lists as deleted, whose delete webhook never came: the id
        map follows it by the lifecycle policy as for a 404, with one audit row; None when the
        entry no longer links `gone_id` (relinked or tombstoned meanwhile)."""
        spec = SPECS[entity]
        with self.runtime.coordination.lock(record_lock(self.tenant.id, entity, key)):
            entry = self.idmap.get(self.tenant.id, entity, key)
            if entry is None or entry.pipedrive_id != gone_id or entry.tombstoned_at is not None:
                return None
            audit = Attempt(
                tenant=self.tenant.id,
                direction=PIPEDRIVE_TO_IFS,
                entity=entity,
                record_key=key,
                request_summary={"pipedrive_id": gone_id},
            )
            followed = self._follow_gone(spec, key, self.layout(), gone_id, audit, how=how)
            audit.operation = followed.change.value
            audit.response_summary = {"reason": followed.reason}
            self.audit.write(audit)
            return followed

    def _exists(self, spec: EntitySpec, pipedrive_id: int) -> bool:
        """Whether the record answers a GET: a 404 on a PATCH may name a record it points at."""
        try:
            self.pipedrive.get(spec.resource, pipedrive_id)
        except RemoteError as error:
            if is_gone(error):
                return False
            raise
        return True

    def _follow_gone(
        self,
        spec: EntitySpec,
        key: str,
        layout: PipedriveLayout,
        gone_id: int,
        audit: Attempt,
        dry_run: bool = False,
        how: str = "Pipedrive answered 404",
    ) -> Followed:
        """The linked record is gone: find its merge survivor by the IFS key, then let the
        lifecycle policy decide; the attempt's audit row tells what happened (dry run: what
        would happen)."""
        survivor = self._find_by_key(spec, key, layout, since=None, exclude=gone_id)
        followed = follow_gone(
            self.idmap,
            self.tenant,
            spec.entity,
            key,
            gone_id,
            survivor,
            how=how,
            dry_run=dry_run,
        )
        audit.request_summary = {**(audit.request_summary or {}), "lifecycle": followed.as_dict()}
        log.info("%s %s %s: %s", self.tenant.id, spec.entity, key, followed.reason)
        return followed

    def _ifs_missing(self, spec: EntitySpec, key: str, audit: Attempt, dry_run: bool) -> Outcome:
        """IFS answers 404 for `key`: the tenant's on_ifs_missing decides, once per
        disappearance (ignore: nothing written; close: an open deal is marked lost with the
        configured reason; organizations are left alone)."""
        tenant, policy = self.tenant.id, self.tenant.lifecycle
        entry = self.idmap.get(tenant, spec.entity, key)
        gone = f"IFS has no {spec.entity} {key} any more (404 on its read)"
        audit.request_summary = {"ifs_missing": True}
        if entry is None or entry.pipedrive_id is None:
            audit.skip("ifs_missing", f"{gone}; nothing in Pipedrive is linked to it")
            return Outcome.UNCHANGED
        pipedrive_id = entry.pipedrive_id
        audit.request_summary["pipedrive_id"] = pipedrive_id
        if entry.tombstoned_at is not None:
            audit.skip("tombstoned", f"not written: {entry.tombstone_reason}")
            return Outcome.UNCHANGED
        if entry.ifs_missing_at is not None:
            audit.skip("ifs_missing", f"{gone}; handled by on_ifs_missing already")
            return Outcome.UNCHANGED
        noun = NOUN.get(spec.entity, spec.entity)
        outcome = Outcome.UNCHANGED
        if policy.on_ifs_missing == "ignore":
            audit.skip("ifs_missing", f"{gone}; on_ifs_missing is ignore: {noun} left as it is")
        elif not spec.closes_when_missing:
            audit.skip("ifs_missing", f"{gone}; on_ifs_missing closes deals only: {noun} left")
        else:
            outcome = self._close(spec, key, entry, gone, audit, dry_run)
        if not dry_run:
            self.idmap.mark_ifs_missing(tenant, spec.entity, key, True)
        return outcome

    def _close(
        self,
        spec: EntitySpec,
        key: str,
        entry: IdMapEntry,
        gone: str,
        audit: Attempt,
        dry_run: bool,
    ) -> Outcome:
        """Mark the open deal of a record IFS no longer has lost (on_ifs_missing: close)."""
        assert entry.pipedrive_id is not None
        pipedrive_id, reason = entry.pipedrive_id, self.tenant.lifecycle.ifs_missing_lost_reason
        noun = NOUN.get(spec.entity, spec.entity)
        try:
            current = self.pipedrive.get(spec.resource, pipedrive_id)
        except RemoteError as error:
            if not is_gone(error):
                raise
            audit.skip("ifs_missing", f"{gone}; its {noun} {pipedrive_id} is gone too")
            return Outcome.UNCHANGED
        if current.get("status") != "open":
            # Sales closed it already (won or lost): theirs to keep.
            audit.skip("ifs_missing", f"{gone}; {noun} {pipedrive_id} is {current.get('status')}")
            return Outcome.UNCHANGED
        changes = {"status": "lost", "lost_reason": reason}
        audit.operation = "close"
        audit.request_summary = {**(audit.request_summary or {}), "changes": sorted(changes)}
        if dry_run:
            audit.request_summary["payload"] = changes
            return Outcome.UPDATED
        self.pipedrive.update(spec.resource, pipedrive_id, changes)
        # What the connector last wrote now says lost: a return of the record to IFS reads
        # differs from it, and brings the deal back to what IFS says.
        written = {**(entry.last_payload or {}), "status": "lost"}
        self.idmap.save(self.tenant.id, spec.entity, key, payload=written)
        audit.response_summary = {
            "pipedrive_id": pipedrive_id,
            "reason": f"{gone}; on_ifs_missing is close: {noun} marked lost ({reason})",
        }
        return Outcome.UPDATED

    def _parent_id(
        self,
        spec: EntitySpec,
        key: str,
        data: dict[str, Any],
        dry_run: bool,
        run_id: str | None,
        books: _Bookkeeping,
    ) -> int | None:
        """The Pipedrive id of the record's parent (an order's organization), syncing the
        parent first when it is new; None for an entity without a parent."""
        parent = spec.parent
        if parent is None:
            return None
        prop = parent.key_property(self.tenant)
        parent_key = str(data.get(prop) or "")
        if not parent_key:
            raise RecordError(
                f"IFS {spec.entity} {key}: required property {prop!r} is missing or empty"
            )
        entry = books.entries.get((parent.entity, parent_key))
        if entry is not None and entry.tombstoned_at is not None:
            raise _ParentTombstoned(
                f"not written: its {parent.entity} {parent_key} is tombstoned "
                f"({entry.tombstone_reason})"
            )
        if entry is not None and entry.pipedrive_id is not None:
            return entry.pipedrive_id
        if dry_run:
            return 0
        # A transient failure of the parent raises TransientError: this record retries too.
        result = self.sync_record(parent.entity, parent_key, run_id=run_id)
        if result.outcome is Outcome.FAILED or result.pipedrive_id is None:
            raise RecordError(
                f"{parent.entity} {parent_key} could not be synced first (see its audit)"
            )
        return result.pipedrive_id

    def _earlier_attempt(
        self, spec: EntitySpec, key: str, entry: IdMapEntry | None, books: _Bookkeeping
    ) -> datetime | None:
        """Since when an earlier attempt of this unlinked record may have sent a create that
        it never recorded; None when none can have.

        An id-map entry without a Pipedrive id is one (a create intent, or an attempt that
        ended unsure of its POST); else a stored work item of the record released before
        (another run's, or, when the message says it may not be the first, this one's);
        else, for a repeated message whose item is gone, the last REPEAT_LOOKBACK."""
        if entry is not None:
            return entry.updated_at
        tried = WorkItems(self.runtime.database).tried_before(
            self.tenant.id, spec.entity, key, mine=books.work_item, mine_too=books.repeated
        )
        if tried is None and books.repeated:
            return utcnow() - REPEAT_LOOKBACK
        return tried

    def _find_existing(
        self,
        spec: EntitySpec,
        key: str,
        layout: PipedriveLayout,
        hint: int | None,
        earlier: datetime | None,
    ) -> int | None:
        """Adopt a Pipedrive record that already carries this IFS key (made by hand, or by a
        crashed earlier attempt: `earlier`, see `_earlier_attempt`), so that it is updated
        rather than duplicated."""
        if hint is not None and hint != ABSENT and earlier is None:
            return hint
        if hint == ABSENT and earlier is None:
            return None
        return self._find_by_key(spec, key, layout, since=earlier)

    def _find_by_key(
        self,
        spec: EntitySpec,
        key: str,
        layout: PipedriveLayout,
        *,
        since: datetime | None,
        exclude: int | None = None,
    ) -> int | None:
        """The oldest live record carrying `key` in its key field.

        With `since` (an earlier attempt's create intent), records updated since then are
        listed first: lists see a new record at once, while search may index it only
        seconds later, and trusting search there made duplicates.
        """
        key_field = spec.fields(layout)[spec.key_field]
        if since is not None:
            listed = sorted(
                int(record["id"])
                for record in self.pipedrive.iter_records(
                    spec.resource, updated_since=since - LIST_MARGIN, custom_fields=[key_field]
                )
                if str((record.get("custom_fields") or {}).get(key_field)) == key
                and int(record["id"]) != exclude
            )
            if listed:
                return listed[0]
        candidates = sorted(int(item["id"]) for item in self.pipedrive.search(spec.resource, key))
        for candidate in candidates:
            if candidate == exclude:
                continue
            try:
                current = self.pipedrive.get(spec.resource, candidate)
            except RemoteError as error:
                if is_gone(error):  # deleted since the search index saw it
                    continue
                raise
            if str((current.get("custom_fields") or {}).get(key_field)) == key:
                return candidate
        return None


def _unsure(books: _Bookkeeping, error: ConnectorError) -> _Bookkeeping | None:
    """What an attempt that ends without its bookkeeping writes with its audit row: the
    create intent, when it sent a create whose answer it does not know (a 5xx, a timeout:
    the record may exist), so that the next attempt searches before it creates. Our own
    limiter refusing the create's tokens sent nothing."""
    if books.create_sent is None or isinstance(error, RateLimited):
        return None
    entity, key = books.create_sent
    return _Bookkeeping(saves=[{"entity": entity, "ifs_key": key, "etag": ""}])


def _owned_changes(
    spec: EntitySpec,
    changes: dict[str, Any],
    payload: dict[str, Any],
    written: dict[str, Any] | None,
) -> dict[str, Any]:
    """`changes` without the sales-owned fields that IFS did not change since the connector
    last wrote them (a won deal whose order did not change stays won)."""
    if written is None:
        return changes
    return {
        name: value
        for name, value in changes.items()
        if name not in spec.sales_owned or written.get(name) != payload.get(name)
    }


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
            "tombstoned": plan.tombstoned,
            "missing": plan.missing,
        },
    )
