"""The FastAPI application factory: routes, error handlers, and the outbox relay's lifetime.

``create_app(settings)`` takes the settings its edge built (``lethe api``, ``lethe
serve``, a test); ``from_environment`` is the factory for running under uvicorn directly.
"""
from __future__ import annotations

import gc
import hmac
import logging
import time
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from app import logs, metrics
from app.audit import anchors
from app.audit.routes import router as audit_router
from app.certificates import keys
from app.certificates.routes import router as certificates_router
from app.console import routes as console
from app.datasets.routes import router as datasets_router
from app.db import make_db_engine, session_scope
from app.deletions import evidence
from app.deletions.service import mark_overdue
from app.deletions.intake import Intake
from app.deletions.routes import router as deletions_router
from app.engine import build_engine
from app.http import BodyLimit, StorableText, install_error_handlers
from app.jobs.flow import check_settings
from app.jobs.routes import router as jobs_router
from app.jobs.service import requeue_stalled
from app.models.routes import architectures_router, backbones as backbones_router
from app.models.routes import router as models_router
from app.models.purge import purge
from app.models.service import EnsembleCache
from app.outbox import Relay, prune_sent
from app.owners.routes import router as owners_router
from app.settings import Settings
from app.webhooks.routes import router as webhooks_router
from app.webhooks.sender import Sender
from app.worker import QUEUE, create_celery

log = logging.getLogger("lethe.api")


def from_environment() -> FastAPI:
    """The app for ``LETHE_*`` settings (``uvicorn --factory app.main:from_environment``)."""
    return create_app(Settings())


def create_app(settings: Settings, *, run_relay: bool | None = None) -> FastAPI:
    check_settings(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_db_engine(settings.db_url, settings.db_pool_size)
    factory = sessionmaker(db, expire_on_commit=False)
    run_relay = settings.relay_in_api if run_relay is None else run_relay
    celery = create_celery(settings)  # the API only sends tasks by name

    def send(task: str, payload: dict) -> None:
        celery.send_task(task, kwargs=payload)

    engine = build_engine(settings)
    last_purge = [time.monotonic()]

    def reconcile() -> None:
        with session_scope(factory) as session:
            requeue_stalled(session)
            prune_sent(session, timedelta(days=7))  # sent rows are only history
            mark_overdue(session, actor="lethe-api")  # audited, and the request.overdue webhook
        try:  # sign the audit chain's head where the database cannot change it
            with session_scope(factory) as session:
                anchors.anchor(session, engine.store, app.state.signing_key)
        except anchors.ChainRewritten as exc:
            log.error("the audit chain no longer holds what was anchored (%s): it is not anchored again; "
                      "run `lethe audit verify`", exc)
        except Exception:
            log.exception("anchoring the audit chain failed; the next round retries it")
        if time.monotonic() - last_purge[0] >= settings.purge_interval:
            last_purge[0] = time.monotonic()
            for sweep in (lambda: evidence.sweep(factory, engine, max_hours=settings.evidence_max_hours,
                                                 actor="lethe-api"),
                          lambda: purge(factory, engine, settings, actor="lethe-api")):  # revocations now due
                try:  # one failing sweep does not skip the other
                    sweep()
                except Exception:
                    log.exception("a periodic sweep failed; the next round retries it")

    relay = Relay(factory, send, interval=settings.relay_interval, reconcile=reconcile,
                  reconcile_interval=settings.reconcile_interval)
    webhooks = Sender(factory, allow_private=settings.webhook_allow_private,
                      timeout=settings.webhook_timeout_seconds, retry_seconds=settings.webhook_retry_seconds,
                      give_up_hours=settings.webhook_give_up_hours, interval=settings.webhook_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Move everything loaded at start-up (torch, the app) out of the collector's way:
        # full collections over it stalled about 1% of requests by ~200 ms under load.
        gc.collect()
        gc.freeze()
        with session_scope(factory) as session:
            keys.publish(session, app.state.signing_key)
        await app.state.intake.start()
        if run_relay:
            relay.start()
            webhooks.start()
        yield
        await app.state.intake.stop()
        relay.stop()
        webhooks.stop()
        db.dispose()

    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        summary="Unlearning as a service: deletion requests in, new model versions out, with an audit trail.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = factory
    app.state.key_roles = settings.roles_by_key_hash()
    app.state.engine = engine
    # A key named in settings must exist; the default one is made on first start.
    app.state.signing_key = keys.load(settings.signing_key_path, create=settings.signing_key_file is None)
    app.state.ensembles = EnsembleCache()
    app.state.celery = celery
    app.state.relay = relay
    app.state.webhooks = webhooks
    app.state.poke_relay = relay.poke if run_relay else (lambda: None)
    app.state.intake = Intake(factory, app.state.engine, on_commit=app.state.poke_relay,
                              deadline=timedelta(days=settings.deadline_days))
    install_error_handlers(app)
    for router in (datasets_router, models_router, architectures_router, backbones_router, deletions_router, jobs_router,
                   owners_router, audit_router, certificates_router, webhooks_router):
        app.include_router(router)
    console.install(app)  # /console: the admin console (pages, not API)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        """The database and the broker answer."""
        checks = {}
        try:
            with db.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "checks": checks}
        return JSONResponse({"code": "not_ready", "detail": "a dependency does not answer", "checks": checks},
                            status_code=503)

    state = metrics.StateCollector(factory, celery=celery, queues=(QUEUE,), store=engine.store)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus(request: Request) -> Response:
        """Prometheus metrics (text format): counts and durations, never personal data.
        Open unless LETHE_METRICS_KEYS is set; then it takes one of those bearer keys."""
        keys = request.app.state.settings.metrics_keys
        if keys:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not any(hmac.compare_digest(given, key) for key in keys):
                return JSONResponse({"code": "unauthorized", "detail": "GET /metrics takes a metrics key"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.exposition(metrics.process_registry(), state), media_type=metrics.CONTENT_TYPE)

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(StorableText)
    app.add_middleware(metrics.HttpMetrics)  # counts 413s and errors too
    app.add_middleware(logs.RequestContext, access_log=settings.access_log)  # outermost: every line has the id
    return app
