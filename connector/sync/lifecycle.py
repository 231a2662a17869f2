"""Linked records deleted or merged in Pipedrive: the id map follows, by the tenant's policy.

Two signals lead here, with one outcome: a delete webhook (a merge is a delete carrying
`merged_to_id`), and a 404/410 on a write or read of a linked record. Neither ever becomes
a failure: the entry is relinked to the merge survivor, unlinked (policy recreate: the next
sync creates a new record), or tombstoned (policy respect: nothing is written to it again
until `ml-connector relink` or `sync --full --recreate-deleted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from connector.errors import ConfigError
from connector.storage.audit import IFS_TO_PIPEDRIVE, Attempt, AuditLog
from connector.storage.idmap import CUSTOMER, ORDER, IdMap

if TYPE_CHECKING:
    from connector.tenants import TenantConfig

# Pipedrive's entity names (webhook meta.entity) for the id map's.
ENTITY_FOR_OBJECT = {"deal": ORDER, "organization": CUSTOMER}
NOUN = {ORDER: "deal", CUSTOMER: "organization"}


def record_lock(tenant: str, entity: str, ifs_key: str) -> str:
    """The per-record lock name: upserts and delete webhooks of one record never interleave."""
    return f"record:{tenant}:{entity}:{ifs_key}"


class LinkChange(StrEnum):
    RELINKED = "relinked"  # now points at the merge survivor
    UNLINKED = "unlinked"  # points at nothing: the next sync creates a record (recreate)
    TOMBSTONED = "tombstoned"  # deleted and respected: no further writes


@dataclass(frozen=True)
class Followed:
    """What the id map did about one vanished Pipedrive record."""

    change: LinkChange
    reason: str
    gone_id: int
    survivor_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "change": self.change.value,
            "reason": self.reason,
            "gone_id": self.gone_id,
            "survivor_id": self.survivor_id,
        }


def follow_gone(
    idmap: IdMap,
    tenant: TenantConfig,
    entity: str,
    ifs_key: str,
    gone_id: int,
    survivor_id: int | None,
    *,
    how: str,
    dry_run: bool = False,
) -> Followed:
    """Update the entry of `ifs_key`, whose Pipedrive record `gone_id` is gone (`how`: what
    said so), to the survivor when there is one that stands for no other IFS record.
    `dry_run`: decide the same, change nothing."""
    noun = NOUN.get(entity, entity)
    if survivor_id is not None and survivor_id != gone_id:
        owner = idmap.by_pipedrive_id(tenant.id, entity, survivor_id)
        if owner is None or owner.ifs_key == ifs_key:
            if not dry_run:
                idmap.relink(tenant.id, entity, ifs_key, survivor_id)
            return Followed(
                LinkChange.RELINKED,
                f"{noun} {gone_id} was merged into {survivor_id} ({how}); relinked",
                gone_id,
                survivor_id,
            )
        # The survivor already stands for another IFS record: for this one it is a delete.
    if tenant.lifecycle.on_pipedrive_delete == "respect":
        reason = (
            f"{noun} {gone_id} was deleted in Pipedrive ({how}); on_pipedrive_delete is "
            "respect: nothing is written until `ml-connector relink` or "
            "`sync --full --recreate-deleted`"
        )
        if not dry_run:
            idmap.tombstone(tenant.id, entity, ifs_key, reason)
        return Followed(LinkChange.TOMBSTONED, reason, gone_id)
    if not dry_run:
        idmap.relink(tenant.id, entity, ifs_key, None)
    return Followed(
        LinkChange.UNLINKED,
        f"{noun} {gone_id} was deleted in Pipedrive ({how}); on_pipedrive_delete is recreate: "
        "a new one is created",
        gone_id,
    )


def relink(
    idmap: IdMap,
    audit: AuditLog,
    tenant: str,
    entity: str,
    ifs_key: str,
    pipedrive_id: int | None = None,
    *,
    why: str,
) -> int | None:
    """An operator brings a record back: its tombstone goes, and it is linked to
    `pipedrive_id` (or to nothing: the next sync adopts a record carrying its key, or
    creates one). One audit row tells the story; returns the id it was linked to before."""
    entry = idmap.get(tenant, entity, ifs_key)
    if entry is None:
        raise ConfigError(f"tenant {tenant!r} has no {entity} {ifs_key!r} in the id map")
    before = entry.pipedrive_id
    idmap.relink(tenant, entity, ifs_key, pipedrive_id)
    audit.write(
        Attempt(
            tenant=tenant,
            direction=IFS_TO_PIPEDRIVE,
            entity=entity,
            record_key=ifs_key,
            operation="relink",
            request_summary={
                "from_pipedrive_id": before,
                "to_pipedrive_id": pipedrive_id,
                "was_tombstoned": entry.tombstoned_at is not None,
            },
            response_summary={"reason": why},
        )
    )
    return before


def revive_tombstoned(idmap: IdMap, audit: AuditLog, tenant: str, entity: str) -> list[str]:
    """Relink every tombstoned record of one entity to nothing, so the next run recreates
    them (`sync --full --recreate-deleted`); their keys."""
    keys = idmap.tombstoned_keys(tenant, entity)
    for key in keys:
        relink(idmap, audit, tenant, entity, key, why="sync --full --recreate-deleted")
    return keys
