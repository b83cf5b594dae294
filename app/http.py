"""HTTP plumbing of the API edge: error bodies for every failure, and the body-size limit."""
from __future__ import annotations

import json
import logging
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from sqlalchemy.exc import DataError

from app.errors import ApiError, status_of
from app.faults import FAULT_TYPES, is_transient
from app.text import unstorable
from models_store import LetheError

log = logging.getLogger("lethe.api")

RETRY_AFTER_SECONDS = 5
_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _body(code: str, detail: str, **extra) -> dict:
    return {"code": code, "detail": detail, **extra}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(_body(exc.code, exc.detail, **exc.extra), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LetheError)
    async def _library_error(_: Request, exc: LetheError):
        status, code = status_of(exc)
        if status >= 500:
            log.error("model store error: %s", exc.detail)
        return JSONResponse(_body(code, exc.detail), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return JSONResponse(_body("invalid_request", detail, errors=errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # the framework could not parse the body (e.g. JSON nested too deep)
            return JSONResponse(_body("invalid_request", f"the request body could not be parsed: {exc.detail}"),
                                status_code=422)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    async def _fault(_: Request, exc: Exception):
        if isinstance(exc, DataError):  # the database refused a value of this request (SQLSTATE class 22)
            log.warning("the database refused a value of a request: %s", type(exc.orig).__name__)
            return JSONResponse(_body("invalid_request", "the database cannot store a value of this request"),
                                status_code=422)
        if is_transient(exc):  # the database (or the broker) is down or dropped the connection
            log.warning("service unavailable: %s", type(exc).__name__)
            return JSONResponse(_body("database_unavailable", "the database is unavailable; retry shortly"),
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)  # statement parameters are hidden
        return JSONResponse(_body("internal_error", "internal error; see the server log"), status_code=500)

    for fault in FAULT_TYPES:  # answered here, not re-raised as a 500 by the server
        app.add_exception_handler(fault, _fault)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if is_transient(exc):
            return await _fault(request, exc)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(_body("internal_error", "internal error; see the server log"), status_code=500)


class StorableText:
    """Answers 422 ``invalid_request`` for a path or query string the database could not
    store (a NUL, a lone surrogate), before any route runs: a path parameter that
    reached a query would otherwise fail it with a 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            query = unquote(scope.get("query_string", b"").decode("latin-1"))
            for where, text in (("path", scope.get("path", "")), ("query", query)):
                why = unstorable(text)
                if why:
                    body = {"code": "invalid_request", "detail": f"{where}: {why}", "errors": [
                        {"loc": [where], "msg": why, "type": "unstorable_text"}]}
                    return await JSONResponse(body, status_code=422)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Answers 413 once a request body passes ``limit`` bytes, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        body = {"code": "payload_too_large", "detail": f"request body is larger than {self.limit} bytes"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read as it streams in: 413 ``payload_too_large`` as soon as it
    passes ``limit`` bytes (declared or chunked), before any of it is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def multipart_form(request: Request, file_part: str, *, json_fields: tuple[str, ...] = (),
                         model=None):
    """A multipart body's ``file_part`` and its text fields, those named in
    ``json_fields`` parsed as JSON, validated by pydantic ``model`` when given (then the
    model instance is returned instead of the dict). 422 ``invalid_request`` without the
    file part or for a field that is not JSON; a model's errors are answered like any
    other invalid body."""
    form = await request.form()
    upload = form.get(file_part)
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "invalid_request", f"the upload needs a {file_part!r} file part")
    fields = {k: v for k, v in form.items() if k != file_part and isinstance(v, str)}
    for key in json_fields:
        if key in fields:
            try:
                fields[key] = json.loads(fields[key])
            except ValueError as exc:
                raise ApiError(422, "invalid_request", f"{key} must be JSON: {exc}") from None
    if model is None:
        return upload, fields
    try:
        return upload, model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
