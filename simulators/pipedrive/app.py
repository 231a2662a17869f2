"""Flask application of the Pipedrive simulator: API v1/v2 routes, OAuth, and /_sim control."""

from __future__ import annotations

import base64
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
from flask import Flask, Response, request

from simulators.pipedrive.ratelimit import Verdict, load_token_costs
from simulators.pipedrive.records import (
    ENTITY_PLURAL,
    ApiError,
    decode_cursor,
    encode_cursor,
    parse_rfc3339,
    render_v1_deal,
    render_v2,
)
from simulators.pipedrive.settings import PipedriveSimSettings
from simulators.pipedrive.state import PipedriveSim
from simulators.serving import RunningServer

ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
PREFIXES = {"v1": ("/v1", "/api/v1"), "v2": ("/api/v2",)}
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_CUSTOM_FIELD_KEYS = 15
BLOCK_PAGE = """<!DOCTYPE html>
<html><head><title>403 Forbidden</title></head>
<body><h1>Access denied</h1>
<p>Your requests to the Pipedrive API have been blocked because the client kept sending
requests after receiving HTTP 429 Too Many Requests. Slow down and retry later.</p>
</body></html>
"""


@dataclass
class Caller:
    """Who is calling: the user behind the credential and whether it is an OAuth token."""

    user_id: int
    oauth: bool


View = Callable[..., tuple[int, Any]]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    response = flask.jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _error_body(error: ApiError) -> dict[str, Any]:
    if error.body is not None:
        return error.body
    return {
        "success": False,
        "error": error.error,
        "error_info": ERROR_INFO,
        "data": None,
        "additional_data": None,
    }


def _query_int(name: str, default: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise ApiError(400, f"Validation failed: {name}: must be an integer") from error


def _query_bool(name: str) -> bool:
    return request.args.get(name, "").lower() in {"true", "1"}


def _limit() -> int:
    limit = _query_int("limit", DEFAULT_LIMIT)
    assert limit is not None
    if limit < 1 or limit > MAX_LIMIT:
        raise ApiError(
            400, f"Validation failed: limit: Parameter 'limit' must be between 1 and {MAX_LIMIT}"
        )
    return limit


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def page(
    items: list[dict[str, Any]], allowed_sort: tuple[str, ...] = ("id", "update_time", "add_time")
) -> tuple[list[dict[str, Any]], str | None]:
    """Keyset paging as Pipedrive v2 does it: sort_by/sort_direction, limit, opaque cursor."""
    sort_by = request.args.get("sort_by", "id")
    direction = request.args.get("sort_direction", "asc")
    if sort_by not in allowed_sort:
        raise ApiError(400, f"Validation failed: sort_by: must be one of {list(allowed_sort)}")
    if direction not in {"asc", "desc"}:
        raise ApiError(400, "Validation failed: sort_direction: must be asc or desc")
    limit = _limit()
    descending = direction == "desc"
    ordered = sorted(items, key=lambda r: (r[sort_by], r["id"]), reverse=descending)
    cursor = request.args.get("cursor")
    if cursor:
        position = decode_cursor(cursor)
        if position.get("field") != sort_by or position.get("sortDirection") != direction:
            raise ApiError(400, "Invalid cursor: it belongs to another sort order")
        mark = (position.get("fieldValue"), position.get("id"))
        try:
            ordered = [
                r
                for r in ordered
                if ((r[sort_by], r["id"]) < mark if descending else (r[sort_by], r["id"]) > mark)
            ]
        except TypeError as error:
            raise ApiError(400, "Invalid cursor") from error
    chunk = ordered[:limit]
    next_cursor = None
    if len(ordered) > limit:
        last = chunk[-1]
        next_cursor = encode_cursor(
            {
                "field": sort_by,
                "fieldValue": last[sort_by],
                "sortDirection": direction,
                "id": last["id"],
            }
        )
    return chunk, next_cursor


def create_app(settings: PipedriveSimSettings | None = None) -> Flask:
    """A Flask app serving one simulated company; its state is app.extensions["pipedrive_sim"]."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    sim = PipedriveSim(settings)
    sim.start()
    app.extensions["pipedrive_sim"] = sim
    costs = load_token_costs()

    def operation(
        version: str, spec_path: str, method: str, search: bool = False, entity: str | None = None
    ) -> Callable[[View], View]:
        """Register a view under every prefix of its API version, behind auth and limits."""
        cost = costs[version].get(spec_path, {}).get(method, 1)
        route_name = f"{method} {PREFIXES[version][-1]}{spec_path}"

        def decorate(view: View) -> View:
            @functools.wraps(view)
            def guarded(**kwargs: Any) -> Response:
                response = _guarded_call(view, kwargs, cost, search, entity, method)
                sim.count_request(route_name, cost, response.status_code)
                return response

            rule = spec_path.replace("{id}", "<int:record_id>")
            for prefix in PREFIXES[version]:
                app.add_url_rule(
                    prefix + rule,
                    endpoint=f"{version}:{method}:{prefix}{spec_path}",
                    view_func=guarded,
                    methods=[method],
                )
            return view

        return decorate

    def _caller() -> tuple[str, Caller] | None:
        authorization = request.headers.get("Authorization", "")
        bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        api_token = request.headers.get("x-api-token") or request.args.get("api_token")
        found = sim.user_for_token(api_token, bearer)
        if found is None:
            return None
        credential = bearer if bearer is not None else api_token
        assert credential is not None
        return credential, Caller(found[0], found[1])

    def _guarded_call(
        view: View,
        kwargs: dict[str, Any],
        cost: int,
        search: bool,
        entity: str | None,
        method: str,
    ) -> Response:
        faults = sim.faults
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        found = _caller()
        if found is None:
            return _json(
                401,
                {
                    "success": False,
                    "error": "unauthorized access",
                    "errorCode": 401,
                    "error_info": ERROR_INFO,
                },
            )
        credential, caller = found
        write = method in {"POST", "PUT", "PATCH", "DELETE"}
        with sim.lock:
            if faults.force_429 > 0 or (
                faults.force_429_rate and sim.rng.random() < faults.force_429_rate
            ):
                faults.force_429 = max(0, faults.force_429 - 1)
                verdict = sim.limiter.force_429(credential)
            else:
                verdict = sim.limiter.check(credential, caller.oauth, search, cost, write)
            inject_error = bool(faults.error_rate) and sim.rng.random() < faults.error_rate
            lose_answer = (
                write
                and bool(faults.error_after_write_rate)
                and sim.rng.random() < faults.error_after_write_rate
            )
        refused = _refusal(verdict)
        if refused is not None:
            return refused
        if inject_error:
            return _injected_500(verdict)
        try:
            status, body = view(caller, **kwargs)
        except ApiError as error:
            return _json(error.status, _error_body(error), verdict.headers)
        if entity is not None and write and status < 400:
            sim.count_write(entity, method)
        if lose_answer and status < 400:
            return _injected_500(verdict)
        return _json(status, body, verdict.headers)

    def _refusal(verdict: Verdict) -> Response | None:
        if verdict.status == 403:
            with sim.lock:
                sim.counters["blocked_403"] += 1
            return Response(BLOCK_PAGE, status=403, mimetype="text/html")
        if verdict.status == 429:
            return _json(
                429,
                {
                    "success": False,
                    "error": "Request over limit",
                    "errorCode": 429,
                    "error_info": ERROR_INFO,
                    "data": None,
                    "additional_data": None,
                },
                verdict.headers,
            )
        return None

    def _injected_500(verdict: Verdict) -> Response:
        with sim.lock:
            sim.counters["injected_500"] += 1
        return _json(
            500,
            {
                "success": False,
                "error": "Internal server error",
                "errorCode": 500,
                "error_info": ERROR_INFO,
            },
            verdict.headers,
        )

    # ------------------------------------------------------------------ v2 deals & organizations
    def _custom_keys() -> list[str] | None:
        raw = request.args.get("custom_fields")
        if not raw:
            return None
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if len(keys) > MAX_CUSTOM_FIELD_KEYS:
            raise ApiError(
                400, f"Validation failed: custom_fields: at most {MAX_CUSTOM_FIELD_KEYS} keys"
            )
        return keys

    def _list_records(entity: str, archived: bool = False) -> list[dict[str, Any]]:
        """Records a v2 list answers; deals are split into not archived and archived lists."""
        statuses = None
        if entity == "deal" and request.args.get("status"):
            statuses = set(request.args["status"].split(","))
            if not statuses <= {"open", "won", "lost", "deleted"}:
                raise ApiError(400, "Validation failed: status")
        records = sim.all_records(entity, include_deleted=bool(statuses and "deleted" in statuses))
        if statuses is not None:
            records = [r for r in records if r["status"] in statuses]
        if entity == "deal":
            records = [r for r in records if r["is_archived"] == archived]
        if request.args.get("ids"):
            try:
                ids = {int(x) for x in request.args["ids"].split(",") if x}
            except ValueError as error:
                raise ApiError(400, "Validation failed: ids") from error
            records = [r for r in records if r["id"] in ids]
        filters = ("owner_id",) + (
            ("org_id", "person_id", "pipeline_id", "stage_id") if entity == "deal" else ()
        )
        for name in filters:
            wanted = _query_int(name)
            if wanted is not None:
                records = [r for r in records if r.get(name) == wanted]
        since = request.args.get("updated_since")
        if since:
            moment = parse_rfc3339(since)
            records = [r for r in records if parse_rfc3339(r["update_time"]) >= moment]
        until = request.args.get("updated_until")
        if until:
            moment = parse_rfc3339(until)
            records = [r for r in records if parse_rfc3339(r["update_time"]) < moment]
        return records

    def _register_entity(entity: str) -> None:
        plural = ENTITY_PLURAL[entity]

        @operation("v2", f"/{plural}", "GET")
        def list_entities(caller: Caller) -> tuple[int, Any]:
            keys = _custom_keys()
            chunk, next_cursor = page(_list_records(entity))
            return 200, {
                "success": True,
                "data": [render_v2(entity, r, keys) for r in chunk],
                "additional_data": {"next_cursor": next_cursor},
            }

        if entity == "deal":

            @operation("v2", "/deals/archived", "GET")
            def list_archived_deals(caller: Caller) -> tuple[int, Any]:
                keys = _custom_keys()
                chunk, next_cursor = page(_list_records("deal", archived=True))
                return 200, {
                    "success": True,
                    "data": [render_v2("deal", r, keys) for r in chunk],
                    "additional_data": {"next_cursor": next_cursor},
                }

        @operation("v2", f"/{plural}/{{id}}", "GET")
        def get_entity(caller: Caller, record_id: int) -> tuple[int, Any]:
            record = sim.get(entity, record_id)
            return 200, {"success": True, "data": render_v2(entity, record, _custom_keys())}

        @operation("v2", f"/{plural}", "POST", entity=entity)
        def add_entity(caller: Caller) -> tuple[int, Any]:
            record = sim.create(entity, _body(), "api", caller.user_id)
            return 200, {"success": True, "data": render_v2(entity, record, None)}

        @operation("v2", f"/{plural}/{{id}}", "PATCH", entity=entity)
        def update_entity(caller: Caller, record_id: int) -> tuple[int, Any]:
            record = sim.update(entity, record_id, _body(), "api", caller.user_id)
            return 200, {"success": True, "data": render_v2(entity, record, None)}

        @operation("v2", f"/{plural}/{{id}}", "DELETE", entity=entity)
        def delete_entity(caller: Caller, record_id: int) -> tuple[int, Any]:
            sim.delete(entity, record_id, "api", caller.user_id)
            return 200, {"success": True, "data": {"id": record_id}}

        @operation("v1", f"/{plural}/{{id}}/merge", "PUT", entity=entity)
        def merge_entities(caller: Caller, record_id: int) -> tuple[int, Any]:
            merge_with_id = _body().get("merge_with_id")
            survivor = sim.merge(entity, record_id, merge_with_id, "api", caller.user_id)
            if entity == "organization":
                return 200, {"success": True, "data": {"id": survivor["id"]}}
            data = render_v1_deal(survivor, _org_name(survivor["org_id"]))
            data["merge_what_id"] = record_id
            return 200, {"success": True, "data": data}

        search_fields = (
            ("name", "address", "custom_fields", "notes")
            if entity == "organization"
            else ("title", "custom_fields", "notes")
        )

        @operation("v2", f"/{plural}/search", "GET", search=True)
        def search_entities(caller: Caller) -> tuple[int, Any]:
            term = request.args.get("term", "")
            exact = _query_bool("exact_match")
            if len(term) < (1 if exact else 2):
                raise ApiError(
                    400,
                    "Validation failed: term: must be at least 2 characters (1 with exact_match)",
                )
            requested = request.args.get("fields")
            chosen = [f.strip() for f in requested.split(",")] if requested else list(search_fields)
            if not set(chosen) <= set(search_fields):
                raise ApiError(400, f"Validation failed: fields: allowed {list(search_fields)}")
            filters: dict[str, Any] = {}
            if entity == "deal":
                for name, key in (("organization_id", "org_id"), ("person_id", "person_id")):
                    value = _query_int(name)
                    if value is not None:
                        filters[key] = value
                if request.args.get("status"):
                    filters["status"] = request.args["status"]
            hits = sim.search(entity, term, chosen, exact, filters)
            limit = _limit()
            offset = 0
            if request.args.get("cursor"):
                offset = int(decode_cursor(request.args["cursor"]).get("offset", 0))
            chunk = hits[offset : offset + limit]
            more = offset + limit < len(hits)
            return 200, {
                "success": True,
                "data": {"items": [_search_item(entity, *hit) for hit in chunk]},
                "additional_data": {
                    "next_cursor": encode_cursor({"offset": offset + limit}) if more else None
                },
            }

    def _org_name(org_id: int | None) -> str | None:
        with sim.lock:
            org = sim.records["organization"].get(org_id or 0)
            return None if org is None else str(org["name"])

    def _search_item(
        entity: str, score: float, record: dict[str, Any], custom: list[str]
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": record["id"],
            "type": entity,
            "visible_to": record["visible_to"],
            "owner": {"id": record["owner_id"]},
            "custom_fields": custom,
            "notes": [],
        }
        if entity == "organization":
            item["name"] = record["name"]
            if record.get("address"):
                item["address"] = record["address"].get("value", "")
        else:
            with sim.lock:
                stage = dict(sim.stages.get(record["stage_id"], {}))
                org = sim.records["organization"].get(record["org_id"] or 0)
                org = None if org is None else {"id": org["id"], "name": org["name"]}
            item.update(
                {
                    "title": record["title"],
                    "value": record["value"],
                    "currency": record["currency"],
                    "status": record["status"],
                    "stage": {"id": record["stage_id"], "name": stage.get("name", "")},
                    "person": None,
                    "organization": org,
                    "is_archived": record["is_archived"],
                }
            )
        return {"result_score": score, "item": item}

    _register_entity("organization")
    _register_entity("deal")

    # ------------------------------------------------------------------ v2 pipelines & stages
    def _pipeline_view(pipeline: dict[str, Any]) -> dict[str, Any]:
        return pipeline

    def _stage_view(stage: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in stage.items() if v is not None or k != "days_to_rotten"}

    @operation("v2", "/pipelines", "GET")
    def list_pipelines(caller: Caller) -> tuple[int, Any]:
        chunk, next_cursor = page(sim.list_pipelines())
        return 200, {
            "success": True,
            "data": [_pipeline_view(p) for p in chunk],
            "additional_data": {"next_cursor": next_cursor},
        }

    @operation("v2", "/pipelines/{id}", "GET")
    def get_pipeline(caller: Caller, record_id: int) -> tuple[int, Any]:
        pipeline = next((p for p in sim.list_pipelines() if p["id"] == record_id), None)
        if pipeline is None:
            raise ApiError(404, "Pipeline not found")
        return 200, {"success": True, "data": _pipeline_view(pipeline)}

    @operation("v2", "/pipelines", "POST")
    def add_pipeline(caller: Caller) -> tuple[int, Any]:
        body = _body()
        pipeline = sim.add_pipeline(body.get("name"), bool(body.get("is_deal_probability_enabled")))
        return 200, {"success": True, "data": _pipeline_view(pipeline)}

    @operation("v2", "/stages", "GET")
    def list_stages(caller: Caller) -> tuple[int, Any]:
        stages = sim.list_stages(_query_int("pipeline_id"))
        chunk, next_cursor = page(stages, ("id", "update_time", "add_time", "order_nr"))
        return 200, {
            "success": True,
            "data": [_stage_view(s) for s in chunk],
            "additional_data": {"next_cursor": next_cursor},
        }

    @operation("v2", "/stages/{id}", "GET")
    def get_stage(caller: Caller, record_id: int) -> tuple[int, Any]:
        stage = next((s for s in sim.list_stages() if s["id"] == record_id), None)
        if stage is None:
            raise ApiError(404, "Stage not found")
        return 200, {"success": True, "data": _stage_view(stage)}

    @operation("v2", "/stages", "POST")
    def add_stage(caller: Caller) -> tuple[int, Any]:
        body = _body()
        stage = sim.add_stage(
            body.get("name"),
            body.get("pipeline_id"),
            int(body.get("deal_probability", 100)),
            bool(body.get("is_deal_rot_enabled", False)),
            body.get("days_to_rotten"),
        )
        return 200, {"success": True, "data": _stage_view(stage)}

    # ------------------------------------------------------------------ v1 fields, webhooks, me
    def _register_fields(entity: str, spec_path: str) -> None:
        @operation("v1", spec_path, "GET")
        def list_fields(caller: Caller) -> tuple[int, Any]:
            fields = sim.list_fields(entity)
            start = _query_int("start", 0) or 0
            limit = _query_int("limit", MAX_LIMIT) or MAX_LIMIT
            chunk = fields[start : start + limit]
            return 200, {
                "success": True,
                "data": chunk,
                "additional_data": {
                    "start": start,
                    "limit": limit,
                    "more_items_in_collection": start + limit < len(fields),
                },
            }

        @operation("v1", spec_path, "POST")
        def add_field(caller: Caller) -> tuple[int, Any]:
            body = _body()
            field = sim.add_field(
                entity, body.get("name"), body.get("field_type"), body.get("options")
            )
            return 200, {"success": True, "data": field}

    _register_fields("deal", "/dealFields")
    _register_fields("organization", "/organizationFields")

    @operation("v1", "/webhooks", "GET")
    def list_webhooks(caller: Caller) -> tuple[int, Any]:
        webhooks = sim.list_webhooks(hide_credentials=sim.settings.hide_webhook_credentials)
        return 200, {"status": "ok", "success": True, "data": webhooks}

    @operation("v1", "/webhooks", "POST")
    def add_webhook(caller: Caller) -> tuple[int, Any]:
        webhook = sim.add_webhook(_body(), caller.user_id)
        return 201, {"status": "ok", "success": True, "data": webhook}

    @operation("v1", "/webhooks/{id}", "DELETE")
    def delete_webhook(caller: Caller, record_id: int) -> tuple[int, Any]:
        if not sim.delete_webhook(record_id):
            raise ApiError(
                404,
                "not found",
                {"status": "error", "success": False, "errors": {"id": ["not found"]}},
            )
        return 200, {"status": "ok", "success": True}

    @operation("v1", "/users/me", "GET")
    def users_me(caller: Caller) -> tuple[int, Any]:
        return 200, {"success": True, "data": _user(sim, caller.user_id)}

    _register_oauth(app, sim)
    _register_control(app, sim)

    @app.errorhandler(404)
    def not_found(error: Exception) -> Response:
        return _json(
            404,
            {
                "success": False,
                "error": "Unknown method .",
                "errorCode": 404,
                "error_info": ERROR_INFO,
            },
        )

    @app.errorhandler(405)
    def not_allowed(error: Exception) -> Response:
        return _json(
            405,
            {
                "success": False,
                "error": "Method not allowed",
                "errorCode": 405,
                "error_info": ERROR_INFO,
            },
        )

    return app


def _user(sim: PipedriveSim, user_id: int) -> dict[str, Any]:
    settings = sim.settings
    integration = user_id == settings.integration_user_id
    return {
        "id": user_id,
        "name": "API Integration" if integration else f"Sales User {user_id}",
        "default_currency": "EUR",
        "locale": "en_US",
        "lang": 1,
        "email": f"user{user_id}@{settings.company_domain}.example",
        "phone": None,
        "activated": True,
        "last_login": "2026-01-01 00:00:00",
        "created": "2025-01-01 00:00:00",
        "modified": "2026-01-01 00:00:00",
        "has_created_company": integration,
        "access": [{"app": "sales", "admin": True, "permission_set_id": "sim-sales-admin"}],
        "active_flag": True,
        "timezone_name": "UTC",
        "timezone_offset": "+00:00",
        "role_id": 1,
        "icon_url": None,
        "is_you": True,
        "is_deleted": False,
        "company_id": settings.company_id,
        "company_name": "Simulated Company",
        "company_domain": settings.company_domain,
        "company_country": "SE",
        "company_industry": "Manufacturing",
        "language": {"language_code": "en", "country_code": "US"},
    }


def _register_oauth(app: Flask, sim: PipedriveSim) -> None:
    @app.post("/oauth/token")
    def oauth_token() -> Response:
        settings = sim.settings
        auth = request.headers.get("Authorization", "")
        client = None
        if auth.lower().startswith("basic "):
            try:
                client = base64.b64decode(auth[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                client = None
        if client != f"{settings.client_id}:{settings.client_secret}":
            return _json(
                401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
            )
        grant_type = request.form.get("grant_type")
        try:
            if grant_type == "authorization_code":
                grant = sim.exchange_code(
                    request.form.get("code", ""), request.form.get("redirect_uri")
                )
            elif grant_type == "refresh_token":
                grant = sim.refresh(request.form.get("refresh_token", ""))
            else:
                return _json(
                    400, {"error": "unsupported_grant_type", "error_description": str(grant_type)}
                )
        except ApiError as error:
            return _json(
                400, {"error": error.error, "error_description": "Invalid or revoked grant"}
            )
        return _json(200, grant)


def _control_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _register_control(app: Flask, sim: PipedriveSim) -> None:
    control = flask.Blueprint("pipedrive_sim_control", __name__, url_prefix="/_sim")

    @control.errorhandler(ApiError)
    def control_error(error: ApiError) -> Response:
        return _json(error.status, _error_body(error))

    @control.post("/reset")
    def reset() -> Response:
        sim.reset()
        return _json(200, {"ok": True})

    @control.post("/seed")
    def seed() -> Response:
        return _json(200, sim.seed(_control_body()))

    @control.get("/stats")
    def stats() -> Response:
        return _json(200, sim.stats())

    @control.post("/deals/<int:deal_id>/move")
    def move_deal(deal_id: int) -> Response:
        body = _control_body()
        deal = sim.move_deal(deal_id, body.get("stage_id"), body.get("status"), body.get("user_id"))
        return _json(200, render_v2("deal", deal, None))

    @control.post("/organizations/<int:record_id>/merge")
    def merge_organizations(record_id: int) -> Response:
        return _user_merges("organization", record_id)

    @control.post("/deals/<int:record_id>/merge")
    def merge_deals(record_id: int) -> Response:
        return _user_merges("deal", record_id)

    def _user_merges(entity: str, record_id: int) -> Response:
        body = _control_body()
        user_id = body.get("user_id", sim.settings.app_user_id)
        survivor = sim.merge(entity, record_id, body.get("merge_with_id"), "app", user_id)
        return _json(200, render_v2(entity, survivor, None))

    @control.post("/deals/<int:deal_id>/archive")
    def archive_deal(deal_id: int) -> Response:
        body = _control_body()
        deal = sim.set_archived(deal_id, True, body.get("archive_time"), body.get("user_id"))
        return _json(200, render_v2("deal", deal, None))

    @control.post("/deals/<int:deal_id>/unarchive")
    def unarchive_deal(deal_id: int) -> Response:
        deal = sim.set_archived(deal_id, False, None, _control_body().get("user_id"))
        return _json(200, render_v2("deal", deal, None))

    @control.post("/deals/<int:record_id>/delete")
    def delete_deal(record_id: int) -> Response:
        return _user_deletes("deal", record_id)

    @control.post("/organizations/<int:record_id>/delete")
    def delete_organization(record_id: int) -> Response:
        return _user_deletes("organization", record_id)

    def _user_deletes(entity: str, record_id: int) -> Response:
        user_id = _control_body().get("user_id", sim.settings.app_user_id)
        sim.delete(entity, record_id, "app", user_id)
        return _json(200, {"id": record_id})

    @control.post("/settings")
    def settings() -> Response:
        return _json(200, sim.configure(_control_body()))

    @control.post("/faults")
    def faults() -> Response:
        return _json(200, sim.set_faults(_control_body()))

    @control.get("/webhook-deliveries")
    def deliveries() -> Response:
        return _json(200, sim.delivery_log())

    @control.get("/webhooks")
    def webhooks() -> Response:
        return _json(200, sim.list_webhooks())

    @control.post("/webhooks/<int:webhook_id>/delete")
    def delete_webhook(webhook_id: int) -> Response:
        reason = _control_body().get("reason", "deleted by Pipedrive")
        return _json(200 if sim.delete_webhook(webhook_id, reason) else 404, {"ok": True})

    @control.post("/webhooks/<int:webhook_id>/hmac_secret")
    def hmac_secret(webhook_id: int) -> Response:
        found = sim.set_webhook_secret(webhook_id, _control_body().get("secret"))
        return _json(200 if found else 404, {"ok": found})

    @control.get("/deals")
    def dump_deals() -> Response:
        return _json(200, [render_v2("deal", r, None) for r in sim.all_records("deal", True)])

    @control.get("/organizations")
    def dump_organizations() -> Response:
        records = sim.all_records("organization", True)
        return _json(200, [render_v2("organization", r, None) for r in records])

    @control.post("/oauth/authorize")
    def authorize() -> Response:
        body = _control_body()
        code = sim.issue_code(
            str(body.get("scope", "base deals:full contacts:full admin")),
            body.get("user_id"),
            body.get("redirect_uri"),
        )
        return _json(200, {"code": code})

    @control.post("/oauth/revoke")
    def revoke() -> Response:
        found = sim.revoke_oauth_token(str(_control_body().get("token", "")))
        return _json(200 if found else 404, {"ok": found})

    @control.post("/oauth/expire")
    def expire() -> Response:
        found = sim.expire_access_token(str(_control_body().get("token", "")))
        return _json(200 if found else 404, {"ok": found})

    @control.post("/api-tokens/revoke")
    def revoke_api_token() -> Response:
        found = sim.revoke_api_token(str(_control_body().get("token", "")))
        return _json(200 if found else 404, {"ok": found})

    @control.post("/api-domain")
    def api_domain() -> Response:
        sim.settings.api_domain = str(_control_body()["api_domain"])
        return _json(200, {"api_domain": sim.settings.api_domain})

    app.register_blueprint(control)


def serve(port: int, settings: PipedriveSimSettings | None = None, host: str = "127.0.0.1") -> None:
    """Serve one simulated company until interrupted (blocks)."""
    settings = settings or PipedriveSimSettings()
    app = create_app(settings)
    server = RunningServer(app, host=host, port=port)
    settings.api_domain = server.url
    server.start()
    print(f"Pipedrive simulator on {server.url} (api token: {settings.api_tokens[0]})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        app.extensions["pipedrive_sim"].stop()
