"""IFS entities as the connector holds them: key, ETag and properties; ETag decoding."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

_WEAK_ETAG = re.compile(r'^W/"(?P<payload>[A-Za-z0-9+/=]+)"$')
_INNER = re.compile(r'^W/"(?P<objid>[^":]+):(?P<objversion>\d{14})"$')


@dataclass(frozen=True)
class IfsRecord:
    """One IFS entity: its key value, its `@odata.etag`, and its properties (envelope removed)."""

    key: str
    etag: str
    data: dict[str, Any] = field(hash=False)

    @property
    def objversion(self) -> str:
        """The `YYYYMMDDHHMMSS` stamp inside the ETag: changes on every write in IFS."""
        return parse_etag(self.etag)[1]

    @classmethod
    def from_entity(
        cls, entity: dict[str, Any], key_property: str, etag: str | None = None
    ) -> IfsRecord:
        """Build from an OData entity; the ETag comes from `@odata.etag` or the ETag header."""
        found = entity.get("@odata.etag") or etag
        if not found:
            raise ValueError(f"IFS entity without an ETag: {entity.get(key_property)!r}")
        if key_property not in entity:
            raise ValueError(f"IFS entity without its key property {key_property!r}")
        data = {name: value for name, value in entity.items() if not name.startswith("@odata.")}
        return cls(key=str(entity[key_property]), etag=str(found), data=data)


def parse_etag(etag: str) -> tuple[str, str]:
    """(objid, objversion) from `W/"<base64 of W/"objid:objversion">"`; ValueError otherwise."""
    outer = _WEAK_ETAG.match(etag.strip())
    if not outer:
        raise ValueError(f"not an IFS ETag: {etag!r}")
    try:
        decoded = base64.b64decode(outer.group("payload"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"not an IFS ETag: {etag!r}") from None
    inner = _INNER.match(decoded)
    if not inner:
        raise ValueError(f"not an IFS ETag: {etag!r}")
    return inner.group("objid"), inner.group("objversion")


def make_etag(objid: str, objversion: str) -> str:
    """The ETag IFS would send for this objid/objversion (the inverse of parse_etag)."""
    payload = base64.b64encode(f'W/"{objid}:{objversion}"'.encode()).decode("ascii")
    return f'W/"{payload}"'
