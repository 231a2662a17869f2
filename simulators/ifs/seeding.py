"""Reproducible IFS data: customers and customer orders built from one seed.

Orders start from the real captured header (data/customer_order_sample.json), so every
order carries exactly its field set; the values that matter to a CRM are varied.
"""

from __future__ import annotations

import copy
import random
import string
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from simulators.ifs.schema import order_sample

FIRST_ORDER_NUMBER = 1_000_000_001

# country → (language, currency, GL region, IFS company, site, association-number prefix)
_COUNTRIES: dict[str, tuple[str, str, str, str, str, str]] = {
    "FR": ("fr", "EUR", "EU-WEST", "FR0090", "FR018", "FR"),
    "DE": ("de", "EUR", "EU-CENTRAL", "DE0010", "DE011", "DE"),
    "GB": ("en", "GBP", "EU-WEST", "GB0020", "GB021", "GB"),
    "ES": ("es", "EUR", "EU-SOUTH", "ES0030", "ES031", "ES"),
    "IT": ("it", "EUR", "EU-SOUTH", "IT0040", "IT041", "IT"),
    "SE": ("sv", "SEK", "EU-NORTH", "SE0050", "SE051", "SE"),
    "NO": ("no", "NOK", "EU-NORTH", "NO0060", "NO061", "NO"),
    "US": ("en", "USD", "NA", "US0070", "US071", "US"),
    "NL": ("nl", "EUR", "EU-CENTRAL", "NL0080", "NL081", "NL"),
}
_NAME_HEADS = (
    "Atlantic",
    "Nordic",
    "Alpine",
    "Riviera",
    "Baltic",
    "Horizon",
    "Meridian",
    "Harbor",
    "Coastal",
    "Summit",
    "Pioneer",
    "Vector",
    "Granite",
    "Azure",
    "Cedar",
    "Delta",
)
_NAME_TAILS = (
    "Marine",
    "Yachts",
    "Boatworks",
    "Logistics",
    "Nautic",
    "Shipyard",
    "Distribution",
    "Trading",
    "Composites",
    "Engineering",
    "Outfitters",
    "Charter",
)
_FORMS = {
    "FR": "SAS",
    "DE": "GmbH",
    "GB": "Ltd",
    "ES": "SL",
    "IT": "SRL",
    "SE": "AB",
    "NO": "AS",
    "US": "Inc",
    "NL": "BV",
}
_COST_CENTERS = ("CC-4100", "CC-4200", "CC-4300", "CC-5100", "CC-5200")
_PROFIT_CENTERS = ("PC-100", "PC-200", "PC-300", "PC-400")
_MARKETS = (None, "RETAIL", "DEALER", "FLEET", "CHARTER")
_DISTRICTS = (None, "NORTH", "SOUTH", "EAST", "WEST")
# Weighted so a seeded set looks like a live order book.
_STATES = (
    ("Planned", 18),
    ("Released", 22),
    ("Reserved", 12),
    ("Picked", 6),
    ("PartiallyDelivered", 6),
    ("Delivered", 10),
    ("Invoiced", 18),
    ("Cancelled", 4),
    ("Blocked", 4),
)
_BLOCKABLE = ("Planned", "Released", "Reserved")
_OBJID_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


@dataclass
class SeededRecord:
    """One entity before it enters the store: data, its objid/objversion, hidden state."""

    data: dict[str, Any]
    objid: str
    objversion: str
    previous_state: str | None = None


def customer_id(number: int) -> str:
    return f"C{number:05d}"


def order_no(number: int) -> str:
    return f"C{number:010d}"


def make_objid(rng: random.Random) -> str:
    """An 18-character Oracle ROWID like `AAAZI2AAhAAA5vTAAA`."""
    return "AAAZ" + "".join(rng.choice(_OBJID_ALPHABET) for _ in range(11)) + "AAA"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _past_moment(rng: random.Random, start: date, days: int) -> datetime:
    day = start + timedelta(days=rng.randrange(days))
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        seconds=rng.randrange(7 * 3600, 19 * 3600)
    )


def generate_customers(count: int, rng: random.Random) -> list[SeededRecord]:
    records = []
    for number in range(1, count + 1):
        country = rng.choice(list(_COUNTRIES))
        language, _currency, region, _company, _site, prefix = _COUNTRIES[country]
        name = f"{rng.choice(_NAME_HEADS)} {rng.choice(_NAME_TAILS)} {_FORMS[country]}"
        created = _past_moment(rng, date(2018, 1, 1), 2400)
        changed = created + timedelta(days=rng.randrange(1, 400), seconds=rng.randrange(86400))
        data = {
            "CustomerId": customer_id(number),
            "Name": name.upper() if rng.random() < 0.3 else name,
            "CreationDate": created.date().isoformat(),
            "AssociationNo": f"{prefix}{rng.randrange(10**8, 10**9)}",
            "DefaultLanguage": language,
            "Country": country,
            "PartyType": "Customer",
            "CustomerCategory": "Customer",
            "CorporateForm": _FORMS[country],
            "B2bCustomer": False,
            "Cf_Cost_Center": rng.choice(_COST_CENTERS),
            "Cf_Profit_Center": rng.choice(_PROFIT_CENTERS),
            "Cf_Region": region,
        }
        records.append(SeededRecord(data, make_objid(rng), stamp(changed)))
    return records


def _pick_state(rng: random.Random) -> str:
    states, weights = zip(*_STATES, strict=True)
    return rng.choices(states, weights=weights)[0]


def order_defaults() -> dict[str, Any]:
    """The real header's field set and values, with the installation's custom attributes."""
    data = copy.deepcopy(order_sample())
    data.pop("@odata.etag", None)
    for envelope in ("luname", "keyref", "Objgrants"):
        data.pop(envelope, None)
    data.update({"Cf_Cost_Center": None, "Cf_Profit_Center": None, "Cf_Crm_Stage": None})
    return data


def build_order(
    number: int, customer: dict[str, Any], rng: random.Random
) -> tuple[dict[str, Any], str]:
    """An order for `customer`; returns (data, previous_state_if_blocked)."""
    country = customer.get("Country") or "FR"
    language, currency, _region, company, site, _prefix = _COUNTRIES.get(country, _COUNTRIES["FR"])
    entered = _past_moment(rng, date(2025, 1, 2), 300)
    wanted = entered.date() + timedelta(days=rng.randrange(14, 150))
    planned = wanted + timedelta(days=rng.choice((0, 0, 0, 7, 14)))
    state = _pick_state(rng)
    previous = rng.choice(_BLOCKABLE) if state == "Blocked" else ""
    number_text = order_no(number)
    customer_no = customer["CustomerId"]
    name = customer.get("Name")
    address = f"INVOICE - {country} - {customer_no}"
    week = wanted.isocalendar()
    data = order_defaults()
    data.update(
        {
            "Objstate": state,
            "OrderNo": number_text,
            "BillAddrNo": address,
            "ShipAddrNo": address,
            "Contract": site,
            "Company": company,
            "CurrencyCode": currency,
            "CustomerNo": customer_no,
            "DistrictCode": rng.choice(_DISTRICTS),
            "LanguageCode": language,
            "MarketCode": rng.choice(_MARKETS),
            "NoteId": rng.randrange(80_000_000, 99_999_999),
            "PreAccountingId": rng.randrange(9_000_000, 9_999_999),
            "RegionCode": country,
            "CustomerPoNo": f"PO-{rng.randrange(10000, 99999)}",
            "DateEntered": entered.date().isoformat(),
            "DeliveryCountryCode": country,
            "SupplyCountry": country,
            "WantedDeliveryDate": f"{wanted.isoformat()}T00:00:00Z",
            "PlannedDeliveryDate": f"{planned.isoformat()}T00:00:00Z",
            "WantedDeliveryWeek": f"{week.week:02d}/{week.year}",
            "OrderCreationDate": entered.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "InternalPoNo": f"P{rng.randrange(1_000_000_000, 1_099_999_999)}"
            if rng.random() < 0.4
            else None,
            "TaxIdNo": customer.get("AssociationNo"),
            "CompanyCurrencyCode": "USD" if company.startswith("US") else "EUR",
            "BusinessObjectId": number_text,
            "ConnectionId": customer_no,
            "DelAddrName": name,
            "BillAddrName": name,
            "TotalAmount": round(rng.uniform(1_500, 950_000), 2),
            "CustomerName": name,
            "BlockedType": "ManualBlocked" if state == "Blocked" else "NotBlocked",
            "BlockedReason": "CREDIT" if state == "Blocked" else None,
            "CancelReason": "CUSTOMER" if state == "Cancelled" else None,
            "DopConnectionExists": rng.random() < 0.5,
            "Cf_Cost_Center": customer.get("Cf_Cost_Center") or rng.choice(_COST_CENTERS),
            "Cf_Profit_Center": rng.choice(_PROFIT_CENTERS),
            "Cf_Crm_Stage": None,
        }
    )
    return data, previous


def generate_orders(
    count: int, customers: list[dict[str, Any]], rng: random.Random
) -> list[SeededRecord]:
    records = []
    for index in range(count):
        customer = rng.choice(customers)
        data, previous = build_order(FIRST_ORDER_NUMBER + index, customer, rng)
        entered = datetime.fromisoformat(data["OrderCreationDate"].replace("Z", "+00:00"))
        changed = entered + timedelta(days=rng.randrange(0, 60), seconds=rng.randrange(86400))
        records.append(SeededRecord(data, make_objid(rng), stamp(changed), previous or None))
    return records
