"""Process logging: JSON or text lines, per-task context fields, and redaction of secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote

REDACTED = "[REDACTED]"

# Fields that say which unit of work a line belongs to; set with log_context().
CONTEXT_FIELDS = ("tenant", "entity", "record_key", "task", "correlation_id")

# A key is secret when its name ends in one of these words, so `api_token`, `x-api-token`,
# `accessToken`, `client_secret` and `webhook_password` are caught while `token_cost` or
# `tokens_remaining` (rate-limit figures worth seeing) are not.
_SECRET_KEY_WORDS = (
    r"token|secret|password|passwd|pwd|authorization|api[_-]?key|apikey"
    r"|encryption[_-]?keys?|private[_-]?key|credentials?"
)
_SECRET_KEY = re.compile(rf"(?:{_SECRET_KEY_WORDS})$", re.IGNORECASE)

# `key=value`, `key: value`, `"key": "value"`, `'key': 'value'` inside free text (messages,
# reprs of dicts and requests, query strings). A quoted value is taken whole; the optional
# auth scheme keeps `Authorization: Bearer x` from leaving `x` behind.
_SECRET_PAIR = re.compile(
    rf"""(?P<key>\b[\w.-]*?(?:{_SECRET_KEY_WORDS}))(?![\w-])
        (?P<sep>["']?\s*[:=]\s*)
        (?:
            (?P<quote>["'])(?P<quoted>[^"'\n]*)(?P=quote)
          | (?P<scheme>(?:Bearer|Basic|Token)\s+)?(?P<value>(?!\[REDACTED\])[^\s"',;&}})\]]+)
        )""",
    re.IGNORECASE | re.VERBOSE,
)


def _redact_pair(match: re.Match[str]) -> str:
    if match["quote"]:
        return f"{match['key']}{match['sep']}{match['quote']}{REDACTED}{match['quote']}"
    return f"{match['key']}{match['sep']}{match['scheme'] or ''}{REDACTED}"


_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=-]{6,}")
# A Fernet key is 32 bytes in url-safe base64: 43 characters and one "=".
_FERNET_KEY = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])")
# Fernet tokens (ciphertexts) start with version byte 0x80, i.e. "gAAAAA" in base64.
_FERNET_TOKEN = re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}")
# Passwords in URLs such as postgresql://user:secret@host or redis://:secret@host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)@")

# Shorter values would redact ordinary words everywhere; the vault only holds longer ones.
MIN_REGISTERED_SECRET_LENGTH = 4

_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "mlc_log_context", default=MappingProxyType({})
)
_registered: set[str] = set()
_registered_lock = threading.Lock()
_registered_pattern: re.Pattern[str] | None = None

# LogRecord attributes that are not extra fields.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "_mlc_redacted"}
)


def register_secret(value: str | bytes | None) -> None:
    """Never log `value` (nor its URL-encoded form) from now on, in any process output.

    The vault calls this for every secret it decrypts, so a token that ends up in an
    exception message or a repr is still hidden.
    """
    global _registered_pattern
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if len(text) < MIN_REGISTERED_SECRET_LENGTH:
        return
    with _registered_lock:
        forms = {text, quote(text, safe=""), quote(text, safe="/:")} - _registered
        if not forms:
            return
        _registered.update(forms)
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(re.escape(secret) for secret in ordered))


def is_secret_key(name: str) -> bool:
    """True when a field, header or argument called `name` holds a secret."""
    return bool(_SECRET_KEY.search(name))


def redact_text(text: str) -> str:
    """`text` with every secret this module can recognise replaced by [REDACTED]."""
    pattern = _registered_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _SECRET_PAIR.sub(_redact_pair, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m[1]} {REDACTED}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    text = _FERNET_TOKEN.sub(REDACTED, text)
    return _FERNET_KEY.sub(REDACTED, text)


def redact_value(value: Any, key: str | None = None) -> Any:
    """A copy of `value` (str, mapping, sequence, other) with secrets redacted, by key and text."""
    if key is not None and is_secret_key(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_text(repr(value))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (tenant, entity, record_key, task, correlation_id, …) to every log line
    emitted inside the block, in this thread or asyncio task; blocks nest."""
    added = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **added})
    try:
        yield
    finally:
        _context.reset(token)


def bind_correlation_id(correlation_id: str | None = None) -> str:
    """Set the correlation id for the rest of the current context (or enclosing log_context
    block) and return it; a fresh one is made when none is given."""
    value = correlation_id or uuid.uuid4().hex
    _context.set({**_context.get(), "correlation_id": value})
    return value


def current_context() -> dict[str, Any]:
    """The context fields in force here."""
    return dict(_context.get())


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_")
    }


class ContextFilter(logging.Filter):
    """Copies the log_context() fields onto each record at the moment it is logged.

    Copying at log time (not format time) keeps the fields right even when a handler
    formats later, in another thread.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class RedactionFilter(logging.Filter):
    """Removes secrets from a record's message, arguments, extra fields and traceback.

    It rewrites the record itself, so every handler after it (and pytest's caplog) sees
    only the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_mlc_redacted", False):
            return True
        # Containers are redacted by key; everything else is caught in the message text
        # below, so `%d` and `%.2f` arguments keep their types.
        if isinstance(record.args, Mapping):
            record.args = redact_value(record.args)
        elif record.args:
            record.args = tuple(
                redact_value(arg) if isinstance(arg, Mapping | list | tuple | set) else arg
                for arg in record.args
            )
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must still not leak its args
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        for name, value in _extra_fields(record).items():
            setattr(record, name, redact_value(value, name))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record._mlc_redacted = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, context and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Redacting the structure (not the JSON text) keeps escaped secrets from slipping by.
        safe = {name: redact_value(value, name) for name, value in entry.items()}
        return json.dumps(safe, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [tenant=… task=…] message` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extra_fields(record)
        ordered = [name for name in CONTEXT_FIELDS if name in extras]
        ordered += sorted(name for name in extras if name not in CONTEXT_FIELDS)
        if ordered:
            fields = " ".join(f"{name}={redact_value(extras[name], name)}" for name in ordered)
            line = f"{line} [{fields}]"
        return redact_text(line)


class _ConnectorHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging() installed, so a second call replaces it."""


def configure_logging(
    level: str | int = "INFO", fmt: str = "json", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record of this process to `stream` (stderr) as JSON lines or text.

    Call it once at process start (worker, receiver, CLI); calling it again replaces the
    previous set-up. Returns the installed handler.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ConnectorHandler)]:
        root.removeHandler(handler)
    handler = _ConnectorHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Handler filters (not logger filters) also see records propagated from child loggers.
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactionFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler
