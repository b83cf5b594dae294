"""Errors as values a caller can act on: every 4xx body is ``{"code": ..., "detail": ...}``.

Services raise :class:`ApiError` for what only the service can judge (a clash, a
missing row); the libraries below raise their one family, :class:`LetheError`, whose
codes map to statuses here. ``app.http`` turns both into responses.
"""
from __future__ import annotations

from models_store import LetheError
from workers.engine.errors import EngineError

# The LetheError codes that are not 422 (invalid input); unlisted store codes are 500.
STATUS_BY_CODE = {
    "dataset_not_found": 404,
    "owner_not_found": 404,
    "model_not_found": 404,
    "version_not_found": 404,
    "dataset_exists": 409,
    "invalid_dataset": 422,
    "invalid_model": 422,
}


class ApiError(Exception):
    """A 4xx: ``code`` and ``detail``, and ``extra`` fields a caller can act on."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None, extra: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra or {}


def not_found(code: str, detail: str) -> ApiError:
    return ApiError(404, code, detail)


def get_or_404(session, row_type, key, code: str, detail: str):
    """The row of ``row_type`` with primary key ``key``, or a 404 ``code``."""
    row = session.get(row_type, key)
    if row is None:
        raise not_found(code, detail)
    return row


def status_of(exc: LetheError) -> tuple[int, str]:
    """The HTTP status and code for a library error; the store's own failures are a 500."""
    if exc.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[exc.code], exc.code
    if isinstance(exc, EngineError):
        return 422, exc.code
    return 500, "store_error"
