"""Errors as values a caller can act on: every 4xx body is ``{"code": ..., "detail": ...}``."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models_store import StoreError, UnknownModel, UnknownVersion
from workers.engine import EngineError

log = logging.getLogger("lethe.api")

_ENGINE_STATUS = {
    "dataset_not_found": 404,
    "owner_not_found": 404,
    "model_not_found": 404,
    "version_not_found": 404,
    "dataset_exists": 409,
    "invalid_dataset": 422,
    "invalid_model": 422,
}
_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def not_found(code: str, detail: str) -> ApiError:
    return ApiError(404, code, detail)


def _body(code: str, detail: str, **extra) -> dict:
    return {"code": code, "detail": detail, **extra}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(_body(exc.code, exc.detail), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError):
        return JSONResponse(_body(exc.code, exc.detail), status_code=_ENGINE_STATUS.get(exc.code, 422))

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError):
        if isinstance(exc, UnknownModel):
            return JSONResponse(_body("model_not_found", exc.detail), status_code=404)
        if isinstance(exc, UnknownVersion):
            return JSONResponse(_body("version_not_found", exc.detail), status_code=404)
        log.error("model store error: %s", exc.detail)
        return JSONResponse(_body("store_error", exc.detail), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return JSONResponse(_body("invalid_request", detail, errors=errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(_body("internal_error", "internal error; see the server log"), status_code=500)
