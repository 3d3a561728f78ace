"""Toloka-shaped errors: every non-2xx answer carries a JSON body with `code` (toloka-kit maps it)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as `{"code", "message", "payload", "request_id"}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str = "", payload: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.payload = status, code, message, payload

    def body(self, request_id: str = "") -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "payload": self.payload, "request_id": request_id}


def not_found(kind: str, key: str) -> ApiError:
    return ApiError(404, "DOES_NOT_EXIST", f"{kind} {key} does not exist")


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def field_errors(errors: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """`{"field.path": (CODE, message)}` -> Toloka's field-level payload."""
    return {path: {"code": code, "message": message} for path, (code, message) in errors.items()}


def validation(errors: dict[str, tuple[str, str]]) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", "Validation failed", field_errors(errors))
