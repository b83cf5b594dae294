"""Logging for every Lethe process: JSON lines or console text (``LETHE_LOG_FORMAT``),
with the context of the work in hand on every line.

The context is a set of fields kept in a ``contextvars`` variable: ``request_id`` (the
HTTP request's ``X-Request-ID``, or the ids of the HTTP requests that accepted the
deletions a job serves), ``deletion_ids``, ``job_id``, ``model``, ``task``. The HTTP
middleware binds ``request_id``; intake stores it with each deletion it accepts; the
outbox message that wakes the worker carries it; the Celery task and the job flow bind
it again with the job's ids, so one ``request_id`` follows a deletion from the POST
through the outbox, the tasks and the engine.

Never log a raw sample, an owner id or a free-text reason: the fields here are ids the
service made, and messages name models, jobs and counts.
"""
from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

FORMATS = ("json", "console")
_FIELDS: contextvars.ContextVar[dict] = contextvars.ContextVar("lethe_log_fields", default={})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
log = logging.getLogger("lethe.http")


def fields() -> dict:
    """The context fields bound now."""
    return dict(_FIELDS.get())


@contextmanager
def bind(**values):
    """Add fields to the context for the ``with`` block (None values are left out)."""
    token = _FIELDS.set({**_FIELDS.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _FIELDS.reset(token)


def request_id() -> str | None:
    return _FIELDS.get().get("request_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "lethe", {}),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "lethe", {})
        record.context = (" [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]") if context else ""
        return super().format(record)


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (as ``record.lethe``) when it is made."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "lethe"):
            record.lethe = fields()
        return True


def configure(fmt: str = "console", level: str | int = "INFO") -> None:
    """Send every logger's records (uvicorn's and Celery's too) to stderr in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"LETHE_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace", "celery.worker"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # paths may carry owner ids: RequestContext logs routes


def route_template(scope) -> str:
    """The matched route's template (``/v1/owners/{owner_id}``), never the path, which may
    carry an owner id, without path converters (``{owner_id:path}``); ``unmatched`` when
    no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path) if path else "unmatched"


def new_request_id() -> str:
    """32 random hex digits from the process's Mersenne Twister (seeded from the OS at
    start), not ``uuid4``: its ``os.urandom`` call lets go of the GIL on the event loop's
    thread, and taking it back waits behind the intake and relay threads (a profile under
    load showed a fifth of the loop thread's samples there). An id only labels log
    lines: it must be unique, not unguessable."""
    return f"{random.getrandbits(128):032x}"


class RequestContext:
    """ASGI middleware: binds ``request_id`` (the caller's ``X-Request-ID`` when it is a
    plain token of at most 64 characters, else a new one), returns it as
    ``X-Request-ID``, and logs each request by its route template, never its path or
    query (they may carry an owner id)."""

    def __init__(self, app, access_log: bool = True):
        self.app, self.access_log = app, access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else new_request_id()
        started, status = time.perf_counter(), [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        with bind(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = route_template(scope)
                if self.access_log:
                        log.info("%s %s %d %.1f ms", scope["method"], route, status[0],
                             1000 * (time.perf_counter() - started))
