"""Which IFS error answers mean "the order changed under you": 412, or a listed error code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from connector.errors import PreconditionFailed, RemoteError

_ORA = re.compile(r"\bORA-\d{5}\b")


def ifs_error_codes(error: RemoteError) -> set[str]:
    """The codes an IFS error body names: `error.code`, the details' codes, and every
    `ORA-nnnnn` in its messages (PL/SQL errors arrive as DATABASE_ERROR with the number)."""
    try:
        document = json.loads(error.body or "")
    except ValueError:
        document = None
    found: set[str] = set(_ORA.findall(str(error)))
    body = document.get("error") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        return found
    parts = [body, *(d for d in body.get("details") or [] if isinstance(d, dict))]
    for part in parts:
        if isinstance(part.get("code"), str):
            found.add(part["code"])
        found.update(_ORA.findall(str(part.get("message") or "")))
    return found


def is_conflict(error: RemoteError, codes: Iterable[str]) -> bool:
    """True for a stale-ETag answer: any 412, or an error naming one of `codes`."""
    if isinstance(error, PreconditionFailed):
        return True
    if error.status is None or error.retryable:
        return False
    return bool(ifs_error_codes(error) & set(codes))
