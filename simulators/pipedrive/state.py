"""In-memory state of one simulated Pipedrive company, behind one lock."""

from __future__ import annotations

import copy
import random
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import Any

from simulators.pipedrive.ratelimit import RateLimiter
from simulators.pipedrive.records import (
    FIELD_TYPES,
    NUMBER_FIELD_TYPES,
    REFERENCE_FIELD_TYPES,
    SEARCHABLE_FIELD_TYPES,
    STRING_FIELD_TYPES,
    ApiError,
    changed_fields,
    json_number,
    new_field_key,
    parse_rfc3339,
    render_v1,
    render_v2,
    rfc3339,
    utc_now,
    v1_time,
)
from simulators.pipedrive.settings import PipedriveSimSettings
from simulators.pipedrive.webhooks import Delivery, WebhookDispatcher, delivery_request

DEFAULT_STAGES = ("Qualified", "Contact Made", "Demo Scheduled", "Proposal Made", "Negotiations")
WEBHOOK_ACTIONS = {"create", "change", "delete", "*"}
WEBHOOK_OBJECTS = {"deal", "organization", "*"}
V1_ACTION = {"create": "added", "change": "updated", "delete": "deleted"}

# Standard fields listed by /v1/dealFields and /v1/organizationFields: (key, name, field_type).
# Only types that the official v1 response schema accepts are listed.
STANDARD_FIELDS = {
    "deal": (
        ("title", "Title", "varchar"),
        ("value", "Value", "monetary"),
        ("org_id", "Organization", "org"),
        ("person_id", "Contact person", "people"),
        ("owner_id", "Owner", "user"),
        ("expected_close_date", "Expected close date", "date"),
        ("visible_to", "Visible to", "visible_to"),
        ("add_time", "Deal created", "date"),
        ("update_time", "Update time", "date"),
    ),
    "organization": (
        ("name", "Name", "varchar"),
        ("owner_id", "Owner", "user"),
        ("address", "Address", "address"),
        ("visible_to", "Visible to", "visible_to"),
        ("add_time", "Organization created", "date"),
        ("update_time", "Update time", "date"),
    ),
}
ADDRESS_PARTS = (
    "value",
    "country",
    "admin_area_level_1",
    "admin_area_level_2",
    "locality",
    "sublocality",
    "route",
    "street_number",
    "subpremise",
    "postal_code",
)


@dataclass
class Faults:
    """Injected misbehaviour; rates are fractions 0..1 drawn from a seeded generator."""

    error_rate: float = 0.0  # 500 before the request has any effect
    error_after_write_rate: float = 0.0  # 500 after a write was applied (a lost answer)
    latency_ms: int = 0
    force_429: int = 0  # the next N API requests get 429
    force_429_rate: float = 0.0
    duplicate_webhooks: float = 0.0  # share of events delivered twice (same meta.id)
    reorder_webhooks: bool = False
    reorder_hold_s: float = 0.5  # longest an event waits for a later one to overtake it
    seed: int | None = None


class PipedriveSim:
    """One company: organizations, deals, pipelines, fields, webhooks, tokens and counters.

    Every public method takes the lock; the Flask views and tests call these methods.
    """

    def __init__(self, settings: PipedriveSimSettings | None = None) -> None:
        self.settings = settings or PipedriveSimSettings()
        self.lock = threading.RLock()
        self.limiter = RateLimiter(self.settings)
        self.dispatcher = WebhookDispatcher(self)
        self.reset()

    # ----------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Back to a fresh company: default pipeline, no records, no webhooks, zero counters."""
        with self.lock:
            self.dispatcher.reset()
            self.limiter.reset()
            self.faults = Faults()
            self.rng = random.Random()
            self._ids: Counter[str] = Counter()
            self.records: dict[str, dict[int, dict[str, Any]]] = {
                "deal": {},
                "organization": {},
            }
            self.pipelines: dict[int, dict[str, Any]] = {}
            self.stages: dict[int, dict[str, Any]] = {}
            self.fields: dict[str, list[dict[str, Any]]] = {"deal": [], "organization": []}
            self.webhooks: dict[int, dict[str, Any]] = {}
            # When each record was created (wall time), for the search index lag.
            self.created_at: dict[tuple[str, int], float] = {}
            # Merged-away record -> the record it was merged into.
            self.merged_into: dict[tuple[str, int], int] = {}
            self.api_tokens = set(self.settings.api_tokens)
            self.oauth_codes: dict[str, dict[str, Any]] = {}
            self.access_tokens: dict[str, dict[str, Any]] = {}
            self.refresh_tokens: dict[str, dict[str, Any]] = {}
            self.counters: Counter[str] = Counter()
            self.requests: Counter[str] = Counter()
            self.writes: dict[str, Counter[str]] = defaultdict(Counter)
            for entity, standard in STANDARD_FIELDS.items():
                for key, name, field_type in standard:
                    self._add_field(entity, name, field_type, None, key=key)
            pipeline = self.add_pipeline("Pipeline")
            for name in DEFAULT_STAGES:
                self.add_stage(name, pipeline["id"])

    def start(self) -> None:
        self.dispatcher.start()

    def stop(self) -> None:
        self.dispatcher.stop()

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def set_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(Faults)}
        unknown = set(changes) - known
        if unknown:
            raise ApiError(400, f"Unknown fault settings: {sorted(unknown)}")
        with self.lock:
            for key, value in changes.items():
                setattr(self.faults, key, value)
            if "seed" in changes:
                self.rng = random.Random(changes["seed"])
            return asdict(self.faults)

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change scalar settings at run time (e.g. search_lag_s); kept across reset()."""
        current = asdict(self.settings)
        for key, value in changes.items():
            old = current.get(key)
            if not isinstance(old, bool | int | float | str):
                raise ApiError(400, f"Unknown or not adjustable setting: {key}")
            if not _same_kind(old, value):
                raise ApiError(400, f"Setting {key} must be a {type(old).__name__}")
        with self.lock:
            for key, value in changes.items():
                setattr(self.settings, key, value)
            return {key: getattr(self.settings, key) for key in changes}

    # ----------------------------------------------------------------- auth
    def user_for_token(self, api_token: str | None, bearer: str | None) -> tuple[int, bool] | None:
        """(user id, is oauth) of a valid credential, else None."""
        with self.lock:
            if bearer is not None:
                grant = self.access_tokens.get(bearer)
                if grant is None or grant["expires_at"] <= time.time():
                    return None
                return int(grant["user_id"]), True
            if api_token is not None and api_token in self.api_tokens:
                return self.settings.integration_user_id, False
            return None

    def revoke_api_token(self, token: str) -> bool:
        with self.lock:
            if token in self.api_tokens:
                self.api_tokens.discard(token)
                return True
            return False

    def issue_code(self, scope: str, user_id: int | None, redirect_uri: str | None) -> str:
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.oauth_codes[code] = {
                "scope": scope,
                "user_id": user_id or self.settings.integration_user_id,
                "redirect_uri": redirect_uri,
            }
        return code

    def _grant(self, refresh_token: str) -> dict[str, Any]:
        grant = self.refresh_tokens[refresh_token]
        access = secrets.token_urlsafe(32)
        ttl = self.settings.access_token_ttl_s
        self.access_tokens[access] = {
            "user_id": grant["user_id"],
            "refresh_token": refresh_token,
            "expires_at": time.time() + ttl,
        }
        return {
            "access_token": access,
            "token_type": "Bearer",
            # Pipedrive keeps the refresh token across refreshes.
            "refresh_token": refresh_token,
            "scope": grant["scope"],
            "expires_in": ttl,
            "api_domain": self.settings.api_domain,
        }

    def exchange_code(self, code: str, redirect_uri: str | None) -> dict[str, Any]:
        with self.lock:
            issued = self.oauth_codes.pop(code, None)
            if issued is None:
                raise ApiError(400, "invalid_grant")
            if issued["redirect_uri"] and redirect_uri and issued["redirect_uri"] != redirect_uri:
                raise ApiError(400, "invalid_grant")
            refresh = secrets.token_urlsafe(32)
            self.refresh_tokens[refresh] = {"user_id": issued["user_id"], "scope": issued["scope"]}
            return self._grant(refresh)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        with self.lock:
            if refresh_token not in self.refresh_tokens:
                raise ApiError(400, "invalid_grant")
            return self._grant(refresh_token)

    def revoke_oauth_token(self, token: str) -> bool:
        """Revoke an access token, or a refresh token together with its access tokens."""
        with self.lock:
            if self.access_tokens.pop(token, None) is not None:
                return True
            if self.refresh_tokens.pop(token, None) is None:
                return False
            for access, grant in list(self.access_tokens.items()):
                if grant["refresh_token"] == token:
                    del self.access_tokens[access]
            return True

    def expire_access_token(self, token: str) -> bool:
        with self.lock:
            grant = self.access_tokens.get(token)
            if grant is None:
                return False
            grant["expires_at"] = 0.0
            return True

    # ----------------------------------------------------------------- fields
    def _add_field(
        self,
        entity: str,
        name: str,
        field_type: str,
        options: list[dict[str, Any]] | None,
        key: str | None = None,
    ) -> dict[str, Any]:
        now = v1_time(utc_now())
        field_id = self._next_id(f"{entity}_field")
        custom = key is None
        record: dict[str, Any] = {
            "id": field_id,
            "key": key or new_field_key(),
            "name": name,
            "order_nr": field_id,
            "field_type": field_type,
            "add_time": now,
            "update_time": now,
            "last_updated_by_user_id": self.settings.integration_user_id if custom else None,
            "created_by_user_id": self.settings.integration_user_id if custom else None,
            "active_flag": True,
            "edit_flag": custom,
            "index_visible_flag": True,
            "details_visible_flag": True,
            "add_visible_flag": True,
            "important_flag": False,
            "bulk_edit_allowed": True,
            "searchable_flag": custom and field_type in SEARCHABLE_FIELD_TYPES,
            "filtering_allowed": True,
            "sortable_flag": True,
            "mandatory_flag": False,
        }
        if field_type in {"enum", "set"}:
            record["options"] = [
                {"id": self._next_id("field_option"), "label": str(option["label"])}
                for option in options or []
            ]
        self.fields[entity].append(record)
        return record

    def add_field(
        self, entity: str, name: Any, field_type: Any, options: Any = None
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "Field name is required")
        if field_type not in FIELD_TYPES:
            raise ApiError(400, f"Invalid field_type: {field_type!r}")
        if field_type in {"enum", "set"}:
            if not isinstance(options, list) or not options:
                raise ApiError(400, "Options are required for enum and set fields")
            if not all(isinstance(o, dict) and o.get("label") for o in options):
                raise ApiError(400, "Every option needs a label")
        with self.lock:
            return copy.deepcopy(self._add_field(entity, name, field_type, options))

    def list_fields(self, entity: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.fields[entity])

    def _custom_fields(self, entity: str) -> dict[str, dict[str, Any]]:
        return {f["key"]: f for f in self.fields[entity] if f["edit_flag"]}

    def _check_custom_values(self, entity: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise ApiError(400, "custom_fields must be an object")
        known = self._custom_fields(entity)
        for key, value in values.items():
            field = known.get(key)
            if field is None:
                raise ApiError(400, f"Unknown custom field key: {key}")
            if value is None:
                continue
            option_ids = {o["id"] for o in field.get("options", [])}
            checks = _type_checks(field["field_type"], value, option_ids)
            if not all(ok for applies, ok in checks if applies):
                raise ApiError(400, f"Invalid value for custom field {field['name']!r} ({key})")
        return copy.deepcopy(values)

    # ----------------------------------------------------------------- pipelines & stages
    def add_pipeline(self, name: Any, is_deal_probability_enabled: bool = False) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Pipeline name is required")
        with self.lock:
            now = rfc3339(utc_now())
            pipeline_id = self._next_id("pipeline")
            self.pipelines[pipeline_id] = {
                "id": pipeline_id,
                "name": name,
                "order_nr": pipeline_id,
                "is_deleted": False,
                "is_deal_probability_enabled": bool(is_deal_probability_enabled),
                "add_time": now,
                "update_time": now,
            }
            return copy.deepcopy(self.pipelines[pipeline_id])

    def add_stage(
        self,
        name: Any,
        pipeline_id: Any,
        deal_probability: int = 100,
        is_deal_rot_enabled: bool = False,
        days_to_rotten: int | None = None,
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Stage name is required")
        with self.lock:
            if not _is_int(pipeline_id) or pipeline_id not in self.pipelines:
                raise ApiError(400, "Pipeline not found")
            now = rfc3339(utc_now())
            stage_id = self._next_id("stage")
            order = 1 + sum(1 for s in self.stages.values() if s["pipeline_id"] == pipeline_id)
            self.stages[stage_id] = {
                "id": stage_id,
                "order_nr": order,
                "name": name,
                "is_deleted": False,
                "deal_probability": deal_probability,
                "pipeline_id": pipeline_id,
                "is_deal_rot_enabled": bool(is_deal_rot_enabled),
                "days_to_rotten": days_to_rotten,
                "add_time": now,
                "update_time": now,
            }
            return copy.deepcopy(self.stages[stage_id])

    def list_pipelines(self) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self.pipelines.values()))

    def list_stages(self, pipeline_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(
                [s for s in self.stages.values() if pipeline_id in (None, s["pipeline_id"])]
            )

    # ----------------------------------------------------------------- deals & organizations
    def get(self, entity: str, record_id: int) -> dict[str, Any]:
        """The stored record (not rendered); 404 ApiError when missing or deleted."""
        with self.lock:
            record = self.records[entity].get(record_id)
            if record is None or record["is_deleted"]:
                raise ApiError(404, f"{entity.capitalize()} not found")
            return copy.deepcopy(record)

    def all_records(self, entity: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(
                [r for r in self.records[entity].values() if include_deleted or not r["is_deleted"]]
            )

    def create(
        self,
        entity: str,
        body: dict[str, Any],
        change_source: str = "api",
        user_id: int | None = None,
        notify: bool = True,
    ) -> dict[str, Any]:
        with self.lock:
            record = (
                self._new_deal(body, user_id) if entity == "deal" else self._new_org(body, user_id)
            )
            self.records[entity][record["id"]] = record
            # Seeded records stand for data the company already had: indexed long ago.
            self.created_at[(entity, record["id"])] = time.time() if notify else 0.0
            if notify:
                self._emit(entity, "create", None, record, change_source, user_id)
            return copy.deepcopy(record)

    def update(
        self,
        entity: str,
        record_id: int,
        body: dict[str, Any],
        change_source: str = "api",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            before = self.get(entity, record_id)
            record = self.records[entity][record_id]
            candidate = copy.deepcopy(record)
            if entity == "deal":
                self._apply_deal(candidate, body, creating=False)
            else:
                self._apply_org(candidate, body)
            if changed_fields(before, candidate):
                candidate["update_time"] = rfc3339(utc_now())
                record.clear()
                record.update(candidate)
                self._emit(entity, "change", before, record, change_source, user_id)
            return copy.deepcopy(record)

    def delete(
        self, entity: str, record_id: int, change_source: str = "api", user_id: int | None = None
    ) -> None:
        with self.lock:
            before = self.get(entity, record_id)
            record = self.records[entity][record_id]
            record["is_deleted"] = True
            record["update_time"] = rfc3339(utc_now())
            if entity == "deal":
                record["status"] = "deleted"
            self._emit(entity, "delete", before, None, change_source, user_id)

    def merge(
        self,
        entity: str,
        record_id: int,
        merge_with_id: Any,
        change_source: str = "api",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """Merge record_id INTO merge_with_id (Pipedrive's merge endpoints); answers the survivor.

        The survivor keeps its values and takes the merged record's values only where its own
        are empty; the merged record is deleted (404 afterwards) and, for organizations, its
        deals move to the survivor. Webhooks v2 report a merge as a `delete` of the merged
        record (meta.merged_to_id) and a `change` of the survivor.
        """
        if not _is_int(merge_with_id):
            raise ApiError(400, "merge_with_id must be an integer")
        with self.lock:
            if merge_with_id == record_id:
                raise ApiError(400, f"Cannot merge a {entity} with itself")
            merged = self.get(entity, record_id)
            survivor_before = self.get(entity, merge_with_id)
            now = rfc3339(utc_now())
            survivor = self.records[entity][merge_with_id]
            _fill_empty(survivor, merged)
            survivor["update_time"] = now
            away = self.records[entity][record_id]
            away["is_deleted"] = True
            away["update_time"] = now
            if entity == "deal":
                away["status"] = "deleted"
            self.merged_into[(entity, record_id)] = merge_with_id
            self.counters[f"merges_{entity}"] += 1
            self._emit(entity, "delete", merged, None, change_source, user_id, merge_with_id)
            self._emit(entity, "change", survivor_before, survivor, change_source, user_id)
            if entity == "organization":
                for deal in self.records["deal"].values():
                    if deal["org_id"] != record_id:
                        continue
                    before = copy.deepcopy(deal)
                    deal["org_id"] = merge_with_id
                    deal["update_time"] = now
                    if not deal["is_deleted"]:
                        self._emit("deal", "change", before, deal, change_source, user_id)
            return copy.deepcopy(survivor)

    def set_archived(
        self,
        deal_id: int,
        archived: bool,
        archive_time: str | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """A user archives (or unarchives) a deal in the Pipedrive app."""
        body: dict[str, Any] = {"is_archived": archived}
        if archive_time is not None:
            body["archive_time"] = archive_time
        return self.update(
            "deal",
            deal_id,
            body,
            "app",
            user_id if user_id is not None else self.settings.app_user_id,
        )

    def move_deal(
        self,
        deal_id: int,
        stage_id: int | None = None,
        status: str | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """A user moves a deal in the Pipedrive app (webhook change_source "app")."""
        body: dict[str, Any] = {}
        if stage_id is not None:
            body["stage_id"] = stage_id
        if status is not None:
            body["status"] = status
        return self.update(
            "deal",
            deal_id,
            body,
            "app",
            user_id if user_id is not None else self.settings.app_user_id,
        )

    def _new_org(self, body: dict[str, Any], user_id: int | None) -> dict[str, Any]:
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            raise ApiError(400, "Name is required")
        now = rfc3339(utc_now())
        record: dict[str, Any] = {
            "id": 0,
            "name": "",
            "owner_id": user_id or self.settings.integration_user_id,
            "add_time": now,
            "update_time": now,
            "is_deleted": False,
            "visible_to": 3,
            "address": None,
            "label_ids": [],
            "website": None,
            "linkedin": None,
            "industry": None,
            "annual_revenue": None,
            "employee_count": None,
            "custom_fields": {},
        }
        self._apply_org(record, body)
        record["id"] = self._next_id("organization")
        return record

    def _apply_org(self, record: dict[str, Any], body: dict[str, Any]) -> None:
        _require_object(body)
        if "name" in body:
            if not isinstance(body["name"], str) or not body["name"].strip():
                raise ApiError(400, "Name must be a non-empty string")
            record["name"] = body["name"]
        for key in ("owner_id", "visible_to", "industry", "annual_revenue", "employee_count"):
            if key in body:
                if body[key] is not None and not _is_int(body[key]):
                    raise ApiError(400, f"{key} must be an integer")
                if key in {"owner_id", "visible_to"} and body[key] is None:
                    raise ApiError(400, f"{key} must be an integer")
                record[key] = body[key]
        for key in ("website", "linkedin"):
            if key in body:
                if body[key] is not None and not isinstance(body[key], str):
                    raise ApiError(400, f"{key} must be a string")
                record[key] = body[key]
        if "label_ids" in body:
            if not isinstance(body["label_ids"], list) or not all(
                _is_int(x) for x in body["label_ids"]
            ):
                raise ApiError(400, "label_ids must be an array of integers")
            record["label_ids"] = list(body["label_ids"])
        if "address" in body:
            record["address"] = _check_address(body["address"])
        if "custom_fields" in body:
            record["custom_fields"].update(
                self._check_custom_values("organization", body["custom_fields"])
            )

    def _new_deal(self, body: dict[str, Any], user_id: int | None) -> dict[str, Any]:
        if not isinstance(body.get("title"), str) or not body["title"].strip():
            raise ApiError(400, "Title is required")
        now = rfc3339(utc_now())
        owner = user_id or self.settings.integration_user_id
        record: dict[str, Any] = {
            "id": 0,
            "title": "",
            "creator_user_id": owner,
            "owner_id": owner,
            "person_id": None,
            "org_id": None,
            "pipeline_id": None,
            "stage_id": None,
            "value": 0,
            "currency": "EUR",
            "add_time": now,
            "update_time": now,
            "stage_change_time": None,
            "is_deleted": False,
            "is_archived": False,
            "archive_time": None,
            "status": "open",
            "probability": None,
            "lost_reason": None,
            "visible_to": 3,
            "close_time": None,
            "won_time": None,
            "lost_time": None,
            "expected_close_date": None,
            "label_ids": [],
            "origin": "API",
            "origin_id": None,
            "channel": None,
            "channel_id": None,
            "arr": None,
            "mrr": None,
            "acv": None,
            "custom_fields": {},
        }
        self._apply_deal(record, body, creating=True)
        record["id"] = self._next_id("deal")
        return record

    def _apply_deal(self, record: dict[str, Any], body: dict[str, Any], creating: bool) -> None:
        _require_object(body)
        now = rfc3339(utc_now())
        if "title" in body:
            if not isinstance(body["title"], str) or not body["title"].strip():
                raise ApiError(400, "Title must be a non-empty string")
            record["title"] = body["title"]
        if "value" in body:
            if not _is_number(body["value"]):
                raise ApiError(400, "Value must be a number")
            record["value"] = json_number(body["value"])
        if "currency" in body:
            if not isinstance(body["currency"], str) or len(body["currency"]) != 3:
                raise ApiError(400, "Currency must be a 3-letter code")
            record["currency"] = body["currency"].upper()
        for key in ("owner_id", "visible_to", "person_id"):
            if key in body:
                if not _is_int(body[key]) and not (key == "person_id" and body[key] is None):
                    raise ApiError(400, f"{key} must be an integer")
                record[key] = body[key]
        if "org_id" in body:
            org_id = body["org_id"]
            if org_id is not None:
                if not _is_int(org_id):
                    raise ApiError(400, "org_id must be an integer")
                org = self.records["organization"].get(org_id)
                if org is None or org["is_deleted"]:
                    raise ApiError(404, "Organization not found")
            record["org_id"] = org_id
        for key in ("expected_close_date", "lost_reason", "origin_id", "channel_id"):
            if key in body:
                if body[key] is not None and not isinstance(body[key], str):
                    raise ApiError(400, f"{key} must be a string")
                record[key] = body[key]
        if "probability" in body:
            if body["probability"] is not None and not _is_number(body["probability"]):
                raise ApiError(400, "probability must be a number")
            record["probability"] = body["probability"]
        if "label_ids" in body:
            if not isinstance(body["label_ids"], list) or not all(
                _is_int(x) for x in body["label_ids"]
            ):
                raise ApiError(400, "label_ids must be an array of integers")
            record["label_ids"] = list(body["label_ids"])
        self._place_deal(record, body, creating, now)
        self._archive(record, body, now)
        if "status" in body:
            self._set_status(record, body["status"], now)
        if "custom_fields" in body:
            record["custom_fields"].update(self._check_custom_values("deal", body["custom_fields"]))

    def _place_deal(
        self, record: dict[str, Any], body: dict[str, Any], creating: bool, now: str
    ) -> None:
        stage_id = body.get("stage_id")
        pipeline_id = body.get("pipeline_id")
        if stage_id is not None:
            if not _is_int(stage_id) or stage_id not in self.stages:
                raise ApiError(404, "Stage not found")
            if pipeline_id is not None and self.stages[stage_id]["pipeline_id"] != pipeline_id:
                raise ApiError(400, "Stage does not belong to the given pipeline")
        elif pipeline_id is not None:
            if not _is_int(pipeline_id) or pipeline_id not in self.pipelines:
                raise ApiError(404, "Pipeline not found")
            if pipeline_id != record["pipeline_id"]:
                stage_id = self._first_stage(pipeline_id)
        elif creating:
            stage_id = self._first_stage(min(self.pipelines))
        if stage_id is not None and stage_id != record["stage_id"]:
            record["stage_id"] = stage_id
            record["pipeline_id"] = self.stages[stage_id]["pipeline_id"]
            record["stage_change_time"] = None if creating else now

    def _archive(self, record: dict[str, Any], body: dict[str, Any], now: str) -> None:
        """v2 `is_archived`/`archive_time`: the time defaults to now and is cleared on unarchive."""
        if "is_archived" in body:
            if not isinstance(body["is_archived"], bool):
                raise ApiError(400, "is_archived must be a boolean")
            if body["is_archived"] != record["is_archived"]:
                record["is_archived"] = body["is_archived"]
                record["archive_time"] = now if body["is_archived"] else None
        if body.get("archive_time") is not None and record["is_archived"]:
            if not isinstance(body["archive_time"], str):
                raise ApiError(400, "archive_time must be a string")
            # Documented as "YYYY-MM-DD HH:MM:SS" (UTC); answered in RFC 3339 like other times.
            record["archive_time"] = rfc3339(parse_rfc3339(body["archive_time"].replace(" ", "T")))

    def _first_stage(self, pipeline_id: int) -> int:
        stages = [s for s in self.stages.values() if s["pipeline_id"] == pipeline_id]
        if not stages:
            raise ApiError(400, "Pipeline has no stages")
        return int(min(stages, key=lambda s: s["order_nr"])["id"])

    def _set_status(self, record: dict[str, Any], status: Any, now: str) -> None:
        if status not in {"open", "won", "lost"}:
            raise ApiError(400, "Status must be one of open, won, lost")
        if status == record["status"]:
            return
        record["status"] = status
        record["won_time"] = now if status == "won" else None
        record["lost_time"] = now if status == "lost" else None
        record["close_time"] = None if status == "open" else now
        if status != "lost":
            record["lost_reason"] = None

    # ----------------------------------------------------------------- search
    def search(
        self,
        entity: str,
        term: str,
        search_fields: list[str],
        exact: bool,
        filters: dict[str, Any],
    ) -> list[tuple[float, dict[str, Any], list[str]]]:
        """(score, record, matched custom field values) of every match, best first."""
        wanted = term.casefold()

        def matches(text: Any) -> float:
            if text is None:
                return 0.0
            value = str(json_number(text) if _is_number(text) else text).casefold()
            if value == wanted:
                return 1.0
            if not exact and wanted in value:
                return round(len(wanted) / max(len(value), 1), 3)
            return 0.0

        with self.lock:
            searchable = [
                key
                for key, field in self._custom_fields(entity).items()
                if field["field_type"] in SEARCHABLE_FIELD_TYPES
            ]
            results = []
            indexed_before = time.time() - self.settings.search_lag_s
            for record in self.records[entity].values():
                if self.created_at.get((entity, record["id"]), 0.0) > indexed_before:
                    continue
                if record["is_deleted"] or any(
                    record.get(key) != value for key, value in filters.items()
                ):
                    continue
                score = 0.0
                matched_custom: list[str] = []
                for name in search_fields:
                    if name == "custom_fields":
                        for key in searchable:
                            value = record["custom_fields"].get(key)
                            hit = matches(value)
                            if hit:
                                matched_custom.append(str(json_number(value)))
                                score = max(score, hit)
                    elif name == "address":
                        address = record.get("address") or {}
                        score = max(score, matches(address.get("value")))
                    elif name in {"name", "title"}:
                        score = max(score, matches(record.get(name)))
                if score:
                    results.append((score, copy.deepcopy(record), matched_custom))
            results.sort(key=lambda hit: (-hit[0], hit[1]["id"]))
            return results

    # ----------------------------------------------------------------- webhooks
    def add_webhook(self, body: dict[str, Any], owner_id: int) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        url = body.get("subscription_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            errors["subscription_url"] = ["invalid or non-reachable URL"]
        if body.get("event_action") not in WEBHOOK_ACTIONS:
            errors["event_action"] = ["invalid value"]
        if body.get("event_object") not in WEBHOOK_OBJECTS:
            errors["event_object"] = ["invalid value"]
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 255:
            errors["name"] = ["is required"]
        version = body.get("version", "2.0")
        if version not in {"1.0", "2.0"}:
            errors["version"] = ["invalid value"]
        if errors:
            raise ApiError(
                400, "validation", {"status": "error", "success": False, "errors": errors}
            )
        with self.lock:
            webhook_id = self._next_id("webhook")
            self.webhooks[webhook_id] = {
                "id": webhook_id,
                "company_id": self.settings.company_id,
                "owner_id": owner_id,
                "user_id": body.get("user_id") if _is_int(body.get("user_id")) else owner_id,
                "event_action": body["event_action"],
                "event_object": body["event_object"],
                "subscription_url": url,
                "version": version,
                "is_active": 1,
                "add_time": _webhook_time(),
                "remove_time": None,
                "type": "general",
                "http_auth_user": body.get("http_auth_user"),
                "http_auth_password": body.get("http_auth_password"),
                "remove_reason": None,
                "last_delivery_time": None,
                "last_http_status": None,
                "admin_id": owner_id,
                "name": name,
                "_hmac_secret": None,
                "_first_try_failures": 0,
                "_banned_until": 0.0,
            }
            return self.webhook_view(webhook_id)

    def webhook_view(self, webhook_id: int) -> dict[str, Any]:
        with self.lock:
            webhook = self.webhooks[webhook_id]
            return {k: copy.deepcopy(v) for k, v in webhook.items() if not k.startswith("_")}

    def list_webhooks(self, hide_credentials: bool = False) -> list[dict[str, Any]]:
        """Every subscription; hide_credentials answers the credentials as null."""
        with self.lock:
            views = [self.webhook_view(i) for i in self.webhooks]
        if hide_credentials:
            for view in views:
                view["http_auth_user"] = None
                view["http_auth_password"] = None
        return views

    def delete_webhook(self, webhook_id: int, reason: str | None = None) -> bool:
        with self.lock:
            webhook = self.webhooks.pop(webhook_id, None)
            if webhook is not None and reason:
                self.counters["webhooks_deleted_by_pipedrive"] += 1
            return webhook is not None

    def set_webhook_secret(self, webhook_id: int, secret: str | None) -> bool:
        with self.lock:
            if webhook_id not in self.webhooks:
                return False
            self.webhooks[webhook_id]["_hmac_secret"] = secret or None
            return True

    def _emit(
        self,
        entity: str,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        change_source: str,
        user_id: int | None,
        merged_to_id: int | None = None,
    ) -> None:
        user = user_id if user_id is not None else self.settings.integration_user_id
        self.counters[f"events_{action}"] += 1
        now = utc_now()
        event_id = str(uuid.uuid4())
        for webhook in list(self.webhooks.values()):
            if webhook["event_action"] not in {"*", action} or webhook["event_object"] not in {
                "*",
                entity,
            }:
                continue
            if webhook["_banned_until"] > time.monotonic():
                self.counters["webhook_dropped"] += 1
                continue
            if webhook["version"] == "1.0":
                payload = self._v1_payload(webhook, entity, action, before, after, user, now)
            else:
                payload = {
                    "data": None if after is None else render_v2(entity, after, None),
                    "previous": _previous(entity, action, before, after),
                    "meta": {
                        # Real Pipedrive v2 sends the ids in meta as strings.
                        "action": action,
                        "entity": entity,
                        "entity_id": str((after or before or {})["id"]),
                        "id": event_id,
                        "timestamp": now.isoformat().replace("+00:00", "Z"),
                        "change_source": change_source,
                        "user_id": str(user),
                        "company_id": str(self.settings.company_id),
                        "webhook_id": str(webhook["id"]),
                        "webhook_owner_id": str(webhook["owner_id"]),
                        "correlation_id": event_id,
                        "is_bulk_edit": False,
                        "type": "general",
                        "permitted_user_ids": [str(user)],
                        "host": f"{self.settings.company_domain}.pipedrive.com",
                        "version": "2.0",
                        "attempt": 1,
                    },
                }
                if merged_to_id is not None:
                    # Webhooks v2 migration guide: the delete event of a merged-away object
                    # carries merged_to_id (a string, like the other ids in meta).
                    payload["meta"]["merged_to_id"] = str(merged_to_id)
            self.dispatcher.enqueue(webhook["id"], payload)

    def _v1_payload(
        self,
        webhook: dict[str, Any],
        entity: str,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        user: int,
        now: Any,
    ) -> dict[str, Any]:
        event = f"{V1_ACTION[action]}.{entity}"
        return {
            "v": 1,
            "event": event,
            "current": None if after is None else render_v1(entity, after),
            "previous": None if before is None else render_v1(entity, before),
            "retry": 0,
            "matches_filters": {"current": []},
            "meta": {
                "v": 1,
                "id": str(uuid.uuid4()),
                "action": V1_ACTION[action],
                "object": entity,
                "entity": entity,
                "entity_id": int((after or before or {})["id"]),
                "company_id": self.settings.company_id,
                "user_id": user,
                "host": f"{self.settings.company_domain}.pipedrive.com",
                "timestamp": int(now.timestamp()),
                "webhook_id": str(webhook["id"]),
                "is_bulk_update": False,
                "trans_pending": False,
                "change_source": "api" if user == self.settings.integration_user_id else "app",
            },
        }

    # Called by the dispatcher with the lock held.
    def prepare_delivery(
        self, delivery: Delivery
    ) -> tuple[str, bytes, dict[str, str], float] | None:
        webhook = self.webhooks.get(delivery.webhook_id)
        if webhook is None or webhook["_banned_until"] > time.monotonic():
            self.counters["webhook_dropped"] += 1
            return None
        body, headers = delivery_request(webhook, delivery.payload, delivery.attempt)
        return webhook["subscription_url"], body, headers, self.settings.webhook_timeout_s

    def record_delivery(self, delivery: Delivery, status: int | None, ok: bool) -> float | None:
        """Book one attempt's outcome; returns the delay before the next attempt, if any."""
        webhook = self.webhooks.get(delivery.webhook_id)
        self.counters["webhook_ok" if ok else "webhook_failed"] += 1
        if webhook is None:
            return None
        webhook["last_delivery_time"] = _webhook_time()
        webhook["last_http_status"] = status
        if ok:
            webhook["_first_try_failures"] = 0
            return None
        if delivery.duplicate:
            return None
        if delivery.attempt == 1:
            webhook["_first_try_failures"] += 1
            if webhook["_first_try_failures"] >= self.settings.ban_after_failures:
                webhook["_first_try_failures"] = 0
                webhook["_banned_until"] = time.monotonic() + self.settings.ban_seconds
                self.counters["webhook_banned"] += 1
                return None
        delays = self.settings.webhook_retry_delays_s
        if delivery.attempt > len(delays):
            return None
        self.counters["webhook_retries"] += 1
        return float(delays[delivery.attempt - 1]) * self.settings.webhook_delay_scale

    def delivery_log(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.dispatcher.log)

    # ----------------------------------------------------------------- seeding & stats
    def seed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create pipelines, fields, organizations and deals without sending webhooks."""
        _require_object(spec)
        created: dict[str, Any] = {}
        with self.lock:
            for pipeline_spec in spec.get("pipelines", []):
                pipeline = self.add_pipeline(pipeline_spec["name"])
                stages = [
                    self.add_stage(name, pipeline["id"])["id"]
                    for name in pipeline_spec.get("stages", [])
                ]
                created.setdefault("pipelines", []).append({"id": pipeline["id"], "stages": stages})
            for entity in ("organization", "deal"):
                for field_spec in spec.get(f"{entity}_fields", []):
                    field = self.add_field(
                        entity,
                        field_spec.get("name"),
                        field_spec.get("field_type"),
                        field_spec.get("options"),
                    )
                    created.setdefault(f"{entity}_fields", []).append(field)
            for entity in ("organization", "deal"):
                for body in spec.get(f"{entity}s", []):
                    record = self.create(entity, body, notify=False)
                    created.setdefault(f"{entity}s", []).append(record["id"])
        return created

    def count_request(self, route: str, cost: int, status: int) -> None:
        with self.lock:
            self.requests[route] += 1
            self.counters[f"status_{status}"] += 1
            if status < 400:
                self.counters["tokens_spent"] += cost

    def count_write(self, entity: str, method: str) -> None:
        with self.lock:
            self.writes[entity][method] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            counters = self.counters
            return {
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "tokens_spent": counters["tokens_spent"],
                "daily_budget_left": self.limiter.daily_left(),
                "rate_limited_429": counters["status_429"],
                "blocked_403": counters["blocked_403"],
                "unauthorized_401": counters["status_401"],
                "injected_errors_500": counters["injected_500"],
                "writes": {entity: dict(c) for entity, c in self.writes.items()},
                "events": {
                    action: counters[f"events_{action}"]
                    for action in ("create", "change", "delete")
                },
                "merges": {entity: counters[f"merges_{entity}"] for entity in self.records},
                "webhooks": {
                    "delivered_ok": counters["webhook_ok"],
                    "failed_attempts": counters["webhook_failed"],
                    "retries_scheduled": counters["webhook_retries"],
                    "bans": counters["webhook_banned"],
                    "dropped": counters["webhook_dropped"],
                    "deleted_by_pipedrive": counters["webhooks_deleted_by_pipedrive"],
                    "pending": self.dispatcher.pending(),
                },
                "records": {
                    entity: sum(1 for r in records.values() if not r["is_deleted"])
                    for entity, records in self.records.items()
                },
            }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_kind(old: Any, new: Any) -> bool:
    """Whether new may replace the setting old (an int is fine for a float setting)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return _is_number(new)
    return isinstance(new, type(old))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_date(value: str) -> bool:
    try:
        return date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def _type_checks(field_type: str, value: Any, option_ids: set[int]) -> list[tuple[bool, bool]]:
    """(applies, ok) for each rule a custom field value must satisfy."""
    return [
        (field_type in STRING_FIELD_TYPES, isinstance(value, str)),
        (field_type in NUMBER_FIELD_TYPES, _is_number(value)),
        (field_type in REFERENCE_FIELD_TYPES, _is_int(value)),
        (field_type == "enum", _is_int(value) and value in option_ids),
        (field_type == "date", isinstance(value, str) and _is_date(value)),
        (
            field_type == "monetary",
            isinstance(value, dict)
            and set(value) == {"value", "currency"}
            and _is_number(value["value"])
            and isinstance(value["currency"], str)
            and len(value["currency"]) == 3,
        ),
        (
            field_type == "set",
            isinstance(value, list)
            and bool(value)
            and all(_is_int(v) and v in option_ids for v in value),
        ),
    ]


def _require_object(body: Any) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")


def _check_address(address: Any) -> dict[str, str] | None:
    if address is None:
        return None
    if isinstance(address, str):
        return {"value": address}
    if not isinstance(address, dict) or any(
        key not in ADDRESS_PARTS or not isinstance(part, str | None)
        for key, part in address.items()
    ):
        raise ApiError(400, "address must be an object of strings")
    return {key: part for key, part in address.items() if part is not None}


# Keys a merge never takes from the merged-away record: identity, times and lifecycle.
MERGE_KEEPS = {
    "id",
    "add_time",
    "update_time",
    "is_deleted",
    "is_archived",
    "archive_time",
    "status",
    "won_time",
    "lost_time",
    "close_time",
    "stage_change_time",
    "creator_user_id",
}


def _fill_empty(survivor: dict[str, Any], merged: dict[str, Any]) -> None:
    """Pipedrive's merge: the survivor's values win; its empty fields take the other's values."""
    for key, value in merged.items():
        if key in MERGE_KEEPS:
            continue
        if key == "custom_fields":
            for field_key, field_value in value.items():
                if survivor["custom_fields"].get(field_key) in (None, "", []):
                    survivor["custom_fields"][field_key] = copy.deepcopy(field_value)
        elif survivor.get(key) in (None, "", []):
            survivor[key] = copy.deepcopy(value)


def _previous(
    entity: str, action: str, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any] | None:
    if before is None:
        return None
    if after is None:
        return render_v2(entity, before, None)
    return changed_fields(before, after) or None


def _webhook_time() -> str:
    return utc_now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
