"""IFS-style error responses: `{"error": {"code", "message", "details"?}}` with an HTTP status."""

from __future__ import annotations

from typing import Any


class IfsError(Exception):
    """An error the simulator answers with, shaped like the IFS OData provider's errors."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {}
        if self.code is not None:
            error["code"] = self.code
        error["message"] = self.message
        if self.details:
            error["details"] = self.details
        return {"error": error}


def syntax_error(text: str, position: int) -> IfsError:
    """Olingo's parser failure, as IFS reports it (0-based position, as in IFS's messages)."""
    return IfsError(
        400,
        "ODP_UNSUPPORTED_URL",
        f"Malformed Request: syntax error at position {position} in '{text}'.",
    )


def property_not_found(name: str, type_name: str) -> IfsError:
    return IfsError(
        400,
        "EXPRESSION_PROPERTY_NOT_IN_TYPE",
        f"The property '{name}' is not found in type {type_name}.",
    )


def unsupported(message: str) -> IfsError:
    return IfsError(400, "ODP_UNSUPPORTED_URL", f"Malformed Request: {message}")


def deserialization_error(detail: str = "") -> IfsError:
    """Olingo could not read the request body into the entity or the action's parameters."""
    message = "Error while de-serializing contents."
    return IfsError(400, "ODP_DESERIALIZATION_ERROR", f"{message} {detail}".strip())


def not_found() -> IfsError:
    return IfsError(404, "ODP_RESOURCE_NOTFOUND", "Resource not found.")


def database_error(ora: int, lu_name: str, error_name: str, text: str) -> IfsError:
    """A PL/SQL Error_SYS failure surfaced through OData (state, field and format checks)."""
    return IfsError(
        400,
        "DATABASE_ERROR",
        text,
        details=[
            {"code": "DATABASE_ERROR", "message": f"ORA-{ora}: {lu_name}.{error_name}: {text}"}
        ],
    )
