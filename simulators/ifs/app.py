"""The IFS Cloud simulator's Flask app: Keycloak token endpoint, OData projections, `/_sim`
control routes; plus `serve()`, which runs it in the foreground."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from urllib.parse import quote, unquote, urlencode

from flask import Flask, Response, g, request
from werkzeug.serving import make_server

from simulators.ifs import odata
from simulators.ifs.auth import issue_token, verify_token
from simulators.ifs.errors import (
    IfsError,
    deserialization_error,
    not_found,
    syntax_error,
    unsupported,
)
from simulators.ifs.metadata import metadata_document
from simulators.ifs.schema import EntityType, customer_order, entity_types
from simulators.ifs.settings import IfsSimSettings
from simulators.ifs.state import IfsSim, value_problem

PROJECTION_ROOT = "/main/ifsapplications/projection/v1"
_RESOURCE_RE = re.compile(
    r"^(?P<set>[A-Za-z_]\w*)(?:\((?P<key>.*)\))?(?:/(?P<operation>[A-Za-z_][\w.]*))?$"
)
_KEY_RE = re.compile(r"^(?:(?P<name>[A-Za-z_]\w*)=)?'(?P<value>(?:[^']|'')*)'$")
_COLLECTION_OPTIONS = {"$filter", "$select", "$orderby", "$top", "$skip", "$count", "$skiptoken"}
_IGNORED_OPTIONS = {"$format"}
_UNSUPPORTED_OPTIONS = {"$expand", "$search", "$apply", "$compute", "$levels", "$index"}
_JSON = "application/json;odata.metadata=minimal;IEEE754Compatible=false"
_METADATA = "$metadata"


def create_app(settings: IfsSimSettings | None = None) -> Flask:
    """Build one simulated IFS installation; its state is `app.extensions["ifs_sim"]`."""
    settings = settings or IfsSimSettings()
    app = Flask("simulators.ifs")
    sim = IfsSim(settings)
    if settings.seed_customers or settings.seed_orders:
        sim.seed(settings.seed_customers, settings.seed_orders, settings.seed)
    app.extensions["ifs_sim"] = sim

    @app.errorhandler(IfsError)
    def _ifs_error(error: IfsError) -> Response:
        return _error_response(error)

    @app.after_request
    def _count(response: Response) -> Response:
        route = getattr(g, "route_label", None)
        if route is not None:
            sim.record(route, response.status_code)
        return response

    @app.post("/auth/realms/<realm>/protocol/openid-connect/token")
    def token(realm: str) -> Response:
        g.route_label = "POST token"
        return _token(sim, realm)

    @app.route(
        f"{PROJECTION_ROOT}/<projection>.svc/<path:resource>",
        methods=["GET", "PATCH", "POST", "PUT", "DELETE"],
    )
    def projection(projection: str, resource: str) -> Response:
        return _projection(sim, projection, resource)

    _register_control_routes(app, sim)
    return app


def serve(port: int, settings: IfsSimSettings | None = None, host: str = "127.0.0.1") -> None:
    """Run the simulator until interrupted (`ml-connector simulate ifs --port N`)."""
    server = make_server(host, port, create_app(settings), threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- responses ---------------------------------------------------------------------------
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, content_type=_JSON)
    response.headers["OData-Version"] = "4.0"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _error_response(error: IfsError) -> Response:
    return _json(error.body(), error.status, error.headers)


# -- OAuth2 (Keycloak) -------------------------------------------------------------------
def _oauth_error(status: int, error: str, description: str) -> Response:
    body = {"error": error, "error_description": description}
    return Response(json.dumps(body), status=status, content_type="application/json")


def _token(sim: IfsSim, realm: str) -> Response:
    settings = sim.settings
    if realm != settings.namespace:
        return Response(
            json.dumps({"error": "Realm does not exist"}), 404, content_type="application/json"
        )
    form = request.form
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    basic = request.headers.get("Authorization", "")
    if basic.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(basic[6:].strip()).decode("utf-8")
            user, _, password = decoded.partition(":")
            client_id, client_secret = unquote(user), unquote(password)
        except (ValueError, UnicodeDecodeError):
            return _oauth_error(400, "invalid_request", "Invalid Basic authentication header")
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error(400, "invalid_request", "Missing form parameter: grant_type")
    if not client_id:
        return _oauth_error(401, "invalid_client", "Invalid client or Invalid client credentials")
    if client_id not in settings.clients:
        return _oauth_error(401, "invalid_client", "Invalid client or Invalid client credentials")
    if client_secret != settings.clients[client_id]:
        return _oauth_error(
            401, "unauthorized_client", "Invalid client or Invalid client credentials"
        )
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant_type")
    scope = form.get("scope") or "openid microprofile-jwt"
    now = sim.now()
    access_token = issue_token(
        sim.signing_key, _issuer(settings.namespace), client_id, scope, now, settings.token_ttl_s
    )
    sim.count("tokens_issued")
    body = {
        "access_token": access_token,
        "expires_in": int(settings.token_ttl_s),
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": scope,
    }
    response = Response(json.dumps(body), 200, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _issuer(namespace: str) -> str:
    return f"{request.host_url.rstrip('/')}/auth/realms/{namespace}"


def _authenticate(sim: IfsSim) -> str:
    header = request.headers.get("Authorization", "")
    unauthorized = IfsError(
        401, None, "Unauthorized", headers={"WWW-Authenticate": 'Bearer realm="IFS"'}
    )
    if not header.lower().startswith("bearer "):
        raise unauthorized
    claims = verify_token(
        sim.signing_key, _issuer(sim.settings.namespace), header[7:].strip(), sim.now()
    )
    if claims is None:
        raise unauthorized
    return str(claims["azp"])


# -- OData projections -------------------------------------------------------------------
def _projection(sim: IfsSim, projection: str, resource: str) -> Response:
    match = _RESOURCE_RE.match(resource)
    entity = (
        entity_types(sim.settings.customer_key).get((projection, match.group("set")))
        if match
        else None
    )
    shape = "" if not match else ("(key)" if match.group("key") is not None else "")
    operation = "/action" if match and match.group("operation") else ""
    label_set = match.group("set") if match else resource
    g.route_label = f"{request.method} {label_set}{shape}{operation}"
    _admit(sim)
    if projection not in {p for p, _ in entity_types(sim.settings.customer_key)}:
        raise IfsError(
            404, "MI_METADATA_NOTFOUND", f"Metadata for projection {projection} not found."
        )
    if resource == _METADATA:
        if request.method != "GET":
            raise IfsError(405, None, "The metadata document is read with GET.")
        return _metadata(projection, sim.settings.customer_key)
    if match is None or entity is None:
        raise not_found()
    key_text, operation_name = match.group("key"), match.group("operation")
    if key_text is None:
        if operation_name is not None:
            raise not_found()
        if request.method != "GET":
            raise IfsError(405, None, "Method not allowed on an entity set.")
        return _collection(sim, entity)
    key = _parse_key(key_text, entity)
    if operation_name is not None:
        if request.method != "POST":
            raise IfsError(405, None, "Actions are invoked with POST.")
        return _action(sim, entity, key, operation_name)
    if request.method == "GET":
        return _single(sim, entity, key)
    if request.method == "PATCH":
        return _patch(sim, entity, key)
    raise IfsError(405, None, f"The method {request.method} is not allowed here.")


def _admit(sim: IfsSim) -> None:
    """Auth (401), then the client's budget (429), then injected faults, for every API call."""
    client_id = _authenticate(sim)
    retry_after = sim.admit(client_id)
    if retry_after is not None:
        raise IfsError(
            429,
            "TOO_MANY_REQUESTS",
            "Too many requests. The request budget for this client is exhausted.",
            headers={"Retry-After": str(retry_after)},
        )
    fault, latency = sim.draw_fault()
    if latency:
        time.sleep(latency)
    if fault == "error":
        raise IfsError(
            503, "SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Try again later."
        )
    if fault == "timeout":
        raise IfsError(
            504, "ODP_OPERATION_TIMEOUT", "The operation timed out before it could complete."
        )


def _metadata(projection: str, customer_key: str) -> Response:
    # Olingo serves the CSDL document as application/xml.
    response = Response(
        metadata_document(projection, customer_key), status=200, content_type="application/xml"
    )
    response.headers["OData-Version"] = "4.0"
    return response


def _parse_key(text: str, entity: EntityType) -> str:
    found = _KEY_RE.match(text.strip())
    if not found:
        raise syntax_error(text, 0)
    name = found.group("name")
    if name is not None and name != entity.key:
        raise IfsError(
            400,
            "ODP_UNSUPPORTED_URL",
            f"Malformed Request: '{name}' is not the key of {entity.entity_set}.",
        )
    return found.group("value").replace("''", "'")


def _service_root(entity: EntityType) -> str:
    return f"{request.host_url.rstrip('/')}{PROJECTION_ROOT}/{entity.projection}.svc"


def _system_options() -> dict[str, str]:
    options: dict[str, str] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if not name.startswith("$"):
            continue
        if name in _UNSUPPORTED_OPTIONS:
            raise unsupported(f"The system query option '{name}' is not supported.")
        if name not in _COLLECTION_OPTIONS | _IGNORED_OPTIONS:
            raise IfsError(
                400,
                "ODP_UNSUPPORTED_URL",
                f"Malformed Request: The system query option '{name}' is not supported.",
            )
        if len(values) > 1:
            raise unsupported(f"The system query option '{name}' may occur only once.")
        options[name] = values[0]
    return options


def _preferences() -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                prefs[name.strip().lower()] = value.strip().strip('"')
    return prefs


def _shape(row: dict[str, Any], etag: str, select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return {"@odata.etag": etag, **row}
    chosen = set(select)
    return {"@odata.etag": etag, **{k: v for k, v in row.items() if k in chosen}}


def _collection(sim: IfsSim, entity: EntityType) -> Response:
    options = _system_options()
    predicate = odata.parse_filter(options["$filter"], entity) if "$filter" in options else None
    select = odata.parse_select(options["$select"], entity) if "$select" in options else None
    orderby = odata.parse_orderby(options["$orderby"], entity) if "$orderby" in options else []
    top = odata.parse_non_negative("$top", options["$top"]) if "$top" in options else None
    skip = odata.parse_non_negative("$skip", options["$skip"]) if "$skip" in options else 0
    count = odata.parse_count(options["$count"]) if "$count" in options else False
    offset = (
        odata.parse_non_negative("$skiptoken", options["$skiptoken"])
        if "$skiptoken" in options
        else 0
    )
    prefs = _preferences()
    page_size = sim.settings.default_page_size
    applied: dict[str, str] = {}
    if "odata.maxpagesize" in prefs:
        requested = prefs["odata.maxpagesize"]
        if not requested.isdigit() or int(requested) == 0:
            raise unsupported(f"The preference odata.maxpagesize={requested} is not valid.")
        page_size = int(requested)
        applied["Preference-Applied"] = f"odata.maxpagesize={page_size}"

    matched = sim.query(entity, predicate)
    rows = sorted(matched, key=lambda pair: str(pair[0].get(entity.key)))
    if orderby:
        by_key = {id(row): etag for row, etag in rows}
        ordered = odata.sort_rows([row for row, _ in rows], orderby, entity)
        rows = [(row, by_key[id(row)]) for row in ordered]
    total = len(rows)
    rows = rows[skip:]
    if top is not None:
        rows = rows[:top]
    page = rows[offset:]
    next_offset = None
    if page_size is not None and len(page) > page_size:
        page = page[:page_size]
        next_offset = offset + page_size

    context = f"{_service_root(entity)}/$metadata#{entity.entity_set}"
    if select is not None:
        context += f"({','.join(select)})"
    body: dict[str, Any] = {"@odata.context": context}
    if count:
        body["@odata.count"] = total
    body["value"] = [_shape(row, etag, select) for row, etag in page]
    if next_offset is not None:
        body["@odata.nextLink"] = _next_link(next_offset)
    return _json(body, headers=applied)


def _next_link(offset: int) -> str:
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "$skiptoken"]
    params.append(("$skiptoken", str(offset)))
    query = urlencode(params, quote_via=quote, safe="$'(),:=*")
    return f"{request.base_url}?{query}"


def _single(sim: IfsSim, entity: EntityType, key: str) -> Response:
    options = _system_options()
    extra = set(options) - {"$select", "$format"}
    if extra:
        raise unsupported(f"The system query option '{sorted(extra)[0]}' is not allowed here.")
    select = odata.parse_select(options["$select"], entity) if "$select" in options else None
    try:
        entity_row = sim.get(entity, key)
    except KeyError:
        raise not_found() from None
    etag = entity_row.pop("@odata.etag")
    body = {
        "@odata.context": f"{_service_root(entity)}/$metadata#{entity.entity_set}/$entity",
        **_shape(entity_row, etag, select),
    }
    sim.after_read(entity, key)
    return _json(body, headers={"ETag": etag})


def _if_match() -> str:
    value = request.headers.get("If-Match")
    if not value:
        raise IfsError(
            428,
            "ODP_MISSING_PRECONDITION",
            "The request requires an If-Match header with the entity's ETag.",
        )
    return value


def _patch(sim: IfsSim, entity: EntityType, key: str) -> Response:
    if_match = _if_match()
    changes = _read_body(entity)
    updated = sim.patch(entity, key, if_match, changes)
    etag = updated.pop("@odata.etag")
    if _preferences().get("return") == "minimal":
        response = Response(status=204)
        response.headers["ETag"] = etag
        response.headers["Preference-Applied"] = "return=minimal"
        return response
    body = {
        "@odata.context": f"{_service_root(entity)}/$metadata#{entity.entity_set}/$entity",
        "@odata.etag": etag,
        **updated,
    }
    return _json(body, headers={"ETag": etag})


def _read_body(entity: EntityType) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError:
        raise deserialization_error() from None
    if not isinstance(body, dict):
        raise deserialization_error()
    changes = {k: v for k, v in body.items() if not k.startswith("@odata.")}
    for name, value in changes.items():
        edm_type = entity.properties.get(name)
        if edm_type is None:
            raise deserialization_error(
                f"The property '{name}' does not exist in type '{entity.name}'."
            )
        if name in entity.read_only:
            continue
        problem = value_problem(edm_type, value, entity.max_lengths.get(name))
        if value is None and name in entity.required:
            problem = "the property may not be null"
        if problem:
            raise deserialization_error(f"Invalid value for property '{name}': {problem}.")
    return changes


def _action(sim: IfsSim, entity: EntityType, key: str, operation: str) -> Response:
    prefix = f"{entity.namespace}.{entity.name}_"
    if not entity.actions or not operation.startswith(prefix):
        raise not_found()
    if_match = _if_match()
    raw = request.get_data(as_text=True)
    try:
        parameters = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise deserialization_error() from None
    if not isinstance(parameters, dict):
        raise deserialization_error("The action parameters must be a JSON object.")
    sim.run_action(key, operation[len(prefix) :], if_match, parameters)
    # A void bound action answers 204 No Content; the client re-reads for the new ETag.
    return Response(status=204)


# -- /_sim control routes ----------------------------------------------------------------
def _register_control_routes(app: Flask, sim: IfsSim) -> None:
    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    def bad(message: str) -> Response:
        return _json({"error": {"code": "SIM_BAD_REQUEST", "message": message}}, 400)

    @app.post("/_sim/reset")
    def sim_reset() -> Response:
        sim.reset()
        return _json({"ok": True})

    @app.post("/_sim/seed")
    def sim_seed() -> Response:
        data = body()
        try:
            result = sim.seed(
                int(data.get("customers", 0)), int(data.get("orders", 0)), int(data.get("seed", 42))
            )
        except (TypeError, ValueError) as error:
            return bad(str(error))
        return _json(result)

    def insert(kind: str) -> Response:
        data = body()
        records = data.get("records", [data.get("record", data)])
        omit = data.get("omit", [])
        inserted = []
        try:
            for record in records:
                fields = {k: v for k, v in record.items() if k not in ("omit", "record")}
                if kind == "order":
                    inserted.append(sim.insert_order(fields, omit))
                else:
                    inserted.append(sim.insert_customer(fields, omit))
        except (TypeError, ValueError, AttributeError) as error:
            return bad(str(error))
        return _json(inserted[0] if len(inserted) == 1 else {"value": inserted}, 201)

    @app.post("/_sim/customers")
    def sim_insert_customer() -> Response:
        return insert("customer")

    @app.post("/_sim/orders")
    def sim_insert_order() -> Response:
        return insert("order")

    def edit_fields() -> dict[str, Any]:
        data = body()
        fields = data.get("fields")
        return fields if isinstance(fields, dict) else data

    @app.post("/_sim/customers/<customer_id>/edit")
    def sim_edit_customer(customer_id: str) -> Response:
        try:
            return _json(sim.edit_customer(customer_id, **edit_fields()))
        except KeyError:
            return _error_response(not_found())
        except ValueError as error:
            return bad(str(error))

    @app.post("/_sim/orders/<order_no>/edit")
    def sim_edit_order(order_no: str) -> Response:
        try:
            return _json(sim.edit_order(order_no, **edit_fields()))
        except KeyError:
            return _error_response(not_found())
        except ValueError as error:
            return bad(str(error))

    @app.delete("/_sim/customers/<customer_id>")
    def sim_remove_customer(customer_id: str) -> Response:
        try:
            sim.remove(sim.customer_type, customer_id)
        except KeyError:
            return _error_response(not_found())
        return _json({"removed": customer_id})

    @app.delete("/_sim/orders/<order_no>")
    def sim_remove_order(order_no: str) -> Response:
        try:
            sim.remove(customer_order(), order_no)
        except KeyError:
            return _error_response(not_found())
        return _json({"removed": order_no})

    @app.post("/_sim/orders/<order_no>/edit-after-read")
    def sim_edit_order_after_read(order_no: str) -> Response:
        try:
            sim.edit_order_after_next_read(order_no, **edit_fields())
        except KeyError:
            return bad(f"no order {order_no}")
        return _json({"pending": order_no})

    @app.get("/_sim/orders/<order_no>")
    def sim_get_order(order_no: str) -> Response:
        try:
            return _json(sim.get_order(order_no))
        except KeyError:
            return _error_response(not_found())

    @app.get("/_sim/customers/<customer_id>")
    def sim_get_customer(customer_id: str) -> Response:
        try:
            return _json(sim.get_customer(customer_id))
        except KeyError:
            return _error_response(not_found())

    @app.get("/_sim/stats")
    def sim_stats() -> Response:
        return _json(sim.stats())

    @app.post("/_sim/faults")
    def sim_faults() -> Response:
        data = body()
        allowed = {"error_rate", "timeout_rate", "latency_ms", "force_429", "retry_after_s", "seed"}
        unknown = set(data) - allowed
        if unknown:
            return bad(f"unknown fault settings: {sorted(unknown)}")
        try:
            return _json(sim.set_faults(**data))
        except (TypeError, ValueError) as error:
            return bad(str(error))

    @app.post("/_sim/stale-etag")
    def sim_stale_etag() -> Response:
        data = body()
        unknown = set(data) - {"status", "code", "ora"}
        if unknown:
            return bad(f"unknown stale-etag settings: {sorted(unknown)}")
        status = data.get("status", sim.settings.stale_etag_status)
        code = data.get("code", sim.settings.stale_etag_code)
        ora = data.get("ora", sim.settings.stale_etag_ora)
        if not isinstance(status, int) or not 400 <= status < 500 or not isinstance(code, str):
            return bad("status must be a 4xx integer and code a string")
        if ora not in (20113, 20114):
            return bad("ora must be 20114 (modified by another user) or 20113 (locked)")
        sim.configure(stale_etag_status=status, stale_etag_code=code, stale_etag_ora=ora)
        return _json({"status": status, "code": code, "ora": ora})

    @app.post("/_sim/clock")
    def sim_clock() -> Response:
        try:
            sim.advance_clock(float(body().get("advance_s", 0)))
        except (TypeError, ValueError) as error:
            return bad(str(error))
        return _json({"now": sim.now()})


__all__ = ["PROJECTION_ROOT", "create_app", "serve"]
