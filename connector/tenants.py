"""The tenants file: per-tenant endpoints, schedules, field mapping and stage map (no secrets)."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connector.cron import CronError, parse_cron
from connector.errors import ConfigError, UnknownTenantError

TENANT_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
IFS_STATES = (
    "Planned",
    "Released",
    "Reserved",
    "Picked",
    "PartiallyDelivered",
    "Delivered",
    "Invoiced",
    "Cancelled",
    "Blocked",
)


# IFS's Error_SYS answers "has been modified by another user" (Record_Modified) with
# ORA-20114 and "is locked by another user" (Record_Locked) with ORA-20113; through OData
# they arrive as DATABASE_ERROR with the ORA number in the message. Either means: re-read
# the order and decide again. A 412 is always a conflict, whatever its code.
DEFAULT_CONFLICT_CODES = ("ORA-20114", "ORA-20113")

ParameterValue = str | int | float | bool | None


class _Strict(BaseModel):
    # An unknown key is almost always a typo; refusing it beats silently ignoring it.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http(s) URL such as https://host.example.com")
    return value.rstrip("/")


class IfsConfig(_Strict):
    """Where and how to reach one tenant's IFS Cloud."""

    base_url: str
    namespace: str = Field(description="IAM realm in /auth/realms/<namespace>/...")
    client_id: str = "ml-connector"
    token_url: str | None = None
    scope: str = "openid microprofile-jwt"
    customer_projection: str = "CustomerHandling.svc"
    customer_entity_set: str = "CustomerInfoSet"
    order_projection: str = "CustomerOrderHandling.svc"
    order_entity_set: str = "CustomerOrderSet"
    requests_per_minute: int = Field(default=1000, gt=0)
    page_size: int = Field(default=200, gt=0, le=5000)
    conflict_codes: tuple[str, ...] = Field(
        default=DEFAULT_CONFLICT_CODES,
        description="IFS error codes (or ORA-nnnnn in the error) that mean a stale ETag",
    )

    _url = field_validator("base_url")(classmethod(lambda cls, v: _check_url(v)))

    @property
    def effective_token_url(self) -> str:
        return self.token_url or (
            f"{self.base_url}/auth/realms/{self.namespace}/protocol/openid-connect/token"
        )

    @property
    def projection_root(self) -> str:
        return f"{self.base_url}/main/ifsapplications/projection/v1"


class PipedriveConfig(_Strict):
    """Where and how to reach one tenant's Pipedrive company, and its plan limits."""

    api_domain: str = Field(description="https://<company>.pipedrive.com")
    auth: Literal["api_token", "oauth2"] = "api_token"
    oauth_client_id: str | None = None
    oauth_token_url: str = "https://oauth.pipedrive.com/oauth/token"
    burst_limit: int = Field(default=20, gt=0, description="requests per rolling 2 s window")
    search_burst_limit: int = Field(default=10, gt=0)
    daily_budget: int = Field(default=30_000, gt=0, description="token cost per day")
    integration_user_id: int | None = Field(
        default=None, description="user behind the connector's token; its changes are echoes"
    )
    pipeline: str = "IFS sales orders"

    _url = field_validator("api_domain", "oauth_token_url")(
        classmethod(lambda cls, v: _check_url(v))
    )

    @model_validator(mode="after")
    def _oauth_needs_client(self) -> PipedriveConfig:
        if self.auth == "oauth2" and not self.oauth_client_id:
            raise ValueError("auth: oauth2 needs oauth_client_id (the Pipedrive app's client id)")
        return self


class CustomFieldNames(_Strict):
    """Display names of the Pipedrive custom fields the connector provisions."""

    ifs_customer_id: str = "IFS customer id"
    ifs_order_no: str = "IFS order number"
    order_status: str = "IFS order status"
    cost_center: str = "Cost center"
    profit_center: str = "Profit center"
    region: str = "Region"


ExtraFieldType = Literal["text", "number", "monetary", "date", "enum"]
EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")


class ExtraField(_Strict):
    """Any further IFS property, mapped to a named Pipedrive custom field of a given type."""

    property: str = Field(description="the IFS property, e.g. DeliveryTerms or Cf_Segment")
    field: str = Field(description="display name of the Pipedrive custom field")
    type: ExtraFieldType = "text"
    options: dict[str, str] | None = Field(
        default=None, description="enum only: IFS value → Pipedrive option label"
    )
    currency: str | None = Field(
        default=None,
        description="monetary only: a fixed ISO currency code (orders default to theirs)",
    )

    @field_validator("field")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the Pipedrive field needs a name")
        return value

    @field_validator("currency")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None and not CURRENCY_CODE.match(value):
            raise ValueError(f"{value!r} is not an ISO currency code such as EUR")
        return value

    @model_validator(mode="after")
    def _options_for_enum(self) -> ExtraField:
        if self.type == "enum" and not self.options:
            raise ValueError("an enum needs options: {IFS value: Pipedrive option label, ...}")
        if self.type != "enum" and self.options is not None:
            raise ValueError(f"options belong to an enum, not to a {self.type} field")
        if self.type != "monetary" and self.currency is not None:
            raise ValueError(f"currency belongs to a monetary field, not to a {self.type} field")
        return self

    def labels(self) -> tuple[str, ...]:
        """The enum's Pipedrive option labels, each once, in the order of the option map."""
        return tuple(dict.fromkeys((self.options or {}).values()))


def _check_extra_names(extra: dict[str, ExtraField]) -> dict[str, ExtraField]:
    bad = [name for name in extra if not EXTRA_NAME.match(name)]
    if bad:
        raise ValueError(
            f"extra field name(s) {', '.join(map(repr, bad))}: use lowercase letters, digits "
            "and underscores, starting with a letter (e.g. delivery_terms)"
        )
    return extra


class CustomerMapping(_Strict):
    """IFS CustomerInfo properties that feed a Pipedrive organization."""

    customer_id: str = "CustomerId"
    name: str = "Name"
    country: str = "Country"
    cost_center: str = "Cf_Cost_Center"
    profit_center: str = "Cf_Profit_Center"
    region: str = "Cf_Region"
    extra: dict[str, ExtraField] = Field(
        default_factory=dict, description="name → further property mapped to its own field"
    )

    _extra_names = field_validator("extra")(classmethod(lambda cls, v: _check_extra_names(v)))


class OrderMapping(_Strict):
    """IFS CustomerOrder properties that feed a Pipedrive deal."""

    order_no: str = "OrderNo"
    customer_no: str = "CustomerNo"
    title: str = Field(
        default="{OrderNo} {CustomerName}", description="format string over order properties"
    )
    value: str = "TotalAmount"
    currency: str = "CurrencyCode"
    status: str = "Objstate"
    cost_center: str = "Cf_Cost_Center"
    profit_center: str = "Cf_Profit_Center"
    region: str = "RegionCode"
    extra: dict[str, ExtraField] = Field(
        default_factory=dict, description="name → further property mapped to its own field"
    )

    _extra_names = field_validator("extra")(classmethod(lambda cls, v: _check_extra_names(v)))


class IfsChange(_Strict):
    """How a deal reaching a stage changes the IFS order: a bound state action or a PATCH."""

    action: str | None = Field(default=None, description="e.g. Release → CustomerOrder_Release")
    parameters: dict[str, ParameterValue] | None = Field(
        default=None, description="the action's parameters, e.g. {CancelReason: CRM}"
    )
    patch: dict[str, ParameterValue] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> IfsChange:
        if (self.action is None) == (self.patch is None):
            raise ValueError("give exactly one of action or patch")
        if self.parameters is not None and self.action is None:
            raise ValueError("parameters belong to an action, not to a patch")
        return self


class StageRule(_Strict):
    """One IFS order state and the Pipedrive stage/status it corresponds to."""

    ifs_state: str
    stage: str | None = Field(default=None, description="stage name in the tenant pipeline")
    deal_status: Literal["open", "won", "lost"] = "open"
    to_ifs: IfsChange | None = None

    @field_validator("ifs_state")
    @classmethod
    def _known_state(cls, value: str) -> str:
        if value not in IFS_STATES:
            raise ValueError(
                f"{value!r} is not an IFS order state; expected one of {', '.join(IFS_STATES)}"
            )
        return value

    @model_validator(mode="after")
    def _stage_or_status(self) -> StageRule:
        if self.stage is None and self.deal_status == "open":
            raise ValueError("an open deal needs a stage")
        return self


DEFAULT_STAGE_MAP: tuple[StageRule, ...] = (
    StageRule(ifs_state="Planned", stage="Planned"),
    StageRule(ifs_state="Released", stage="Released", to_ifs=IfsChange(action="Release")),
    StageRule(ifs_state="Reserved", stage="Reserved"),
    StageRule(ifs_state="Picked", stage="Picked"),
    StageRule(ifs_state="PartiallyDelivered", stage="Partially delivered"),
    StageRule(ifs_state="Blocked", stage="Blocked", to_ifs=IfsChange(action="Block")),
    StageRule(
        ifs_state="Delivered",
        stage="Delivered",
        deal_status="won",
        to_ifs=IfsChange(patch={"Cf_Crm_Stage": "Won"}),
    ),
    StageRule(ifs_state="Invoiced", stage="Delivered", deal_status="won"),
    StageRule(
        ifs_state="Cancelled",
        stage="Planned",
        deal_status="lost",
        to_ifs=IfsChange(action="Cancel"),
    ),
)


class WebhookConfig(_Strict):
    """How the receiver authenticates this tenant's Pipedrive webhooks."""

    auth: Literal["basic", "hmac", "both"] = "basic"
    hmac_header: str = "X-ML-Signature"
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    subscription_url: str | None = Field(
        default=None, description="public URL Pipedrive posts to (…/webhooks/pipedrive/<tenant>)"
    )


class LifecycleConfig(_Strict):
    """What the connector does when a linked record's life goes on without it."""

    on_pipedrive_delete: Literal["recreate", "respect"] = Field(
        default="recreate",
        description=(
            "a linked deal/organization deleted in Pipedrive: recreate it on the next sync "
            "(IFS is the master), or respect the delete (tombstone: no further writes)"
        ),
    )
    on_ifs_missing: Literal["ignore", "close"] = Field(
        default="ignore",
        description=(
            "a linked customer/order that IFS no longer returns: ignore it (nothing written), "
            "or close its deal (marked lost with ifs_missing_lost_reason; organizations are "
            "left alone)"
        ),
    )
    ifs_missing_lost_reason: str = Field(
        default="Removed from IFS", min_length=1, max_length=255, description="with close"
    )


class TenantConfig(_Strict):
    """One tenant: an IFS installation paired with a Pipedrive company."""

    id: str
    name: str | None = None
    ifs: IfsConfig
    pipedrive: PipedriveConfig
    schedule: str = "*/15 * * * *"
    fields: CustomFieldNames = CustomFieldNames()
    customer_mapping: CustomerMapping = CustomerMapping()
    order_mapping: OrderMapping = OrderMapping()
    stage_map: tuple[StageRule, ...] = DEFAULT_STAGE_MAP
    webhook: WebhookConfig = WebhookConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            parse_cron(value)
        except CronError as error:
            raise ValueError(f"expected a 5-field cron string: {error}") from error
        return value

    @field_validator("stage_map")
    @classmethod
    def _one_rule_per_state(cls, rules: tuple[StageRule, ...]) -> tuple[StageRule, ...]:
        states = [rule.ifs_state for rule in rules]
        duplicates = sorted({s for s in states if states.count(s) > 1})
        if duplicates:
            raise ValueError(f"IFS state listed twice: {', '.join(duplicates)}")
        return rules

    @model_validator(mode="after")
    def _extra_fields_fit(self) -> TenantConfig:
        # The custom fields of organizations and of deals (connector.sync.mapping).
        builtin = {
            "customer_mapping": ("ifs_customer_id", "cost_center", "profit_center", "region"),
            "order_mapping": (
                "ifs_order_no", "order_status", "cost_center", "profit_center", "region"
            ),
        }  # fmt: skip
        for where, mapping in (
            ("customer_mapping", self.customer_mapping),
            ("order_mapping", self.order_mapping),
        ):
            taken = {
                " ".join(getattr(self.fields, logical).split()).casefold(): f"fields.{logical}"
                for logical in builtin[where]
            }
            for name, extra in mapping.extra.items():
                display = " ".join(extra.field.split()).casefold()
                if display in taken:
                    raise ValueError(
                        f"{where}.extra.{name}.field {extra.field!r} is already the name of "
                        f"{taken[display]}: give it a name of its own"
                    )
                taken[display] = f"{where}.extra.{name}"
                if extra.type == "monetary" and extra.currency is None and where != "order_mapping":
                    raise ValueError(
                        f"{where}.extra.{name}: a monetary field of an organization needs "
                        "currency: (an ISO code such as EUR); only orders carry their own"
                    )
        return self

    def rule_for_state(self, ifs_state: str) -> StageRule | None:
        return next((rule for rule in self.stage_map if rule.ifs_state == ifs_state), None)

    @property
    def stage_names(self) -> list[str]:
        """Stage names of the tenant pipeline, in stage-map order, without repeats."""
        names: list[str] = []
        for rule in self.stage_map:
            if rule.stage and rule.stage not in names:
                names.append(rule.stage)
        return names


def _keys_at(location: tuple[Any, ...]) -> list[str]:
    """The keys the tenant model accepts where `location` (minus its last part) points."""
    model: Any = TenantConfig
    keyed = False
    for part in location[:-1]:
        if isinstance(part, int) or keyed:
            # An item of a list (stage_map) or a value of a mapping (extra): same model.
            keyed = False
            continue
        annotation = model.model_fields[part].annotation
        keyed = getattr(annotation, "__origin__", None) is dict
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not Ellipsis]
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(name for name in model.model_fields if name != "id")


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        try:
            known = _keys_at(tuple(error["loc"]))
        except (KeyError, TypeError):  # a location the walk does not know: no list then
            known = []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        message = "unknown key"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        if known:
            message += f"; expected one of: {', '.join(known)}"
    elif error["type"] == "missing":
        message = "required key is missing"
    message = message.removeprefix("Value error, ")
    # A check across keys (the tenant as a whole) names its keys in the message itself.
    return f"key {location!r}: {message}" if location else message


@dataclass(frozen=True)
class TenantsReading:
    """One read of the tenants file: the tenants that validate, and each problem found.

    A broken tenant never hides a valid one: long-running roles keep serving every tenant
    in `tenants` and report `problems` (tenant id, or None for the file as a whole).
    """

    source: str
    tenants: dict[str, TenantConfig]
    problems: dict[str | None, list[str]] = field(default_factory=dict)
    digest: str = ""  # sha256 of the file's bytes: cheap to compare for a change

    @property
    def ok(self) -> bool:
        return not self.problems

    def messages(self) -> list[str]:
        return [message for found in self.problems.values() for message in found]

    def error(self) -> ConfigError:
        return ConfigError(f"{self.source} is invalid:\n  " + "\n  ".join(self.messages()))


def read_tenants_document(document: Any, source: str = "tenants file") -> TenantsReading:
    """Validate a parsed tenants document tenant by tenant, keeping the valid ones."""
    if not isinstance(document, dict) or not isinstance(document.get("tenants"), dict):
        problem = f"{source}: expected a mapping with a 'tenants:' mapping at the top"
        return TenantsReading(source, {}, {None: [problem]})
    tenants: dict[str, TenantConfig] = {}
    problems: dict[str | None, list[str]] = {}
    unknown_top = sorted(set(document) - {"tenants"})
    if unknown_top:
        problems[None] = [f"{source}: unknown top-level key(s): {', '.join(unknown_top)}"]
    for tenant_id, body in document["tenants"].items():
        tenant_id = str(tenant_id)
        found = problems.setdefault(tenant_id, [])
        if not TENANT_ID.match(tenant_id):
            found.append(
                f"tenant {tenant_id!r}: the id must be a slug (lowercase letters, digits, "
                "inner hyphens, at most 63 characters)"
            )
        elif not isinstance(body, dict):
            found.append(f"tenant {tenant_id!r}: expected a mapping of settings")
        elif "id" in body:
            found.append(f"tenant {tenant_id!r}: key 'id': unknown key (the id is the name)")
        else:
            try:
                tenants[tenant_id] = TenantConfig.model_validate({**body, "id": tenant_id})
            except ValidationError as error:
                found.extend(
                    f"tenant {tenant_id!r}: {_describe(dict(detail))}" for detail in error.errors()
                )
        if not found:
            del problems[tenant_id]
    return TenantsReading(source, tenants, problems)


def parse_tenants(document: Any, source: str = "tenants file") -> dict[str, TenantConfig]:
    """Validate a parsed tenants document; raise ConfigError naming tenant, key and expectation."""
    reading = read_tenants_document(document, source)
    if not reading.ok:
        raise reading.error()
    return reading.tenants


def read_tenants(path: Path | str) -> TenantsReading:
    """Read the tenants YAML file at `path`, keeping every tenant that validates.

    A missing or unparsable file is a ConfigError (there is nothing to keep from it).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise ConfigError(
            f"tenants file {path} does not exist (set --tenants or CONNECTOR_TENANTS_FILE)"
        ) from error
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    reading = read_tenants_document(document, source=str(path))
    return replace(reading, digest=hashlib.sha256(raw).hexdigest())


def load_tenants(path: Path | str) -> dict[str, TenantConfig]:
    """Read and validate the tenants YAML file at `path`; every problem is a ConfigError."""
    reading = read_tenants(path)
    if not reading.ok:
        raise reading.error()
    return reading.tenants


def get_tenant(tenants: dict[str, TenantConfig], tenant_id: str) -> TenantConfig:
    """The tenant named `tenant_id`, or UnknownTenantError listing the known ones."""
    try:
        return tenants[tenant_id]
    except KeyError:
        raise UnknownTenantError(tenant_id, list(tenants)) from None
