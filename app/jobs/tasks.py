"""Celery tasks: each takes ids, calls one step of the job flow (``flow.JobFlow``) and
returns; a step that asks for shards to run gets them sent here, as a chord.

``register`` puts them on each Celery app that ``app.worker.create_celery`` builds;
each pool process builds its job flow from that app's settings on first use.
"""
from __future__ import annotations

import logging

from celery import Celery, chord

from app import faults, logs
from app.db import make_sessionmaker
from app.deletions.evidence import DatabaseKeyring
from app.engine import build_engine
from app.jobs.flow import Dispatch, JobFlow

log = logging.getLogger("lethe.worker")


def job_flow(app: Celery) -> JobFlow:
    """The job flow of this process (built on first use, inside the pool process: CUDA
    must not be initialised in the parent before the pool forks)."""
    flow = getattr(app, "lethe_flow", None)
    if flow is None:
        s = app.lethe_settings
        sessions = make_sessionmaker(s.db_url, s.db_pool_size)
        engine = build_engine(s, progress=lambda msg, state=None: msg and log.info(msg),
                              keyring=DatabaseKeyring(sessions))
        flow = app.lethe_flow = JobFlow(s, sessions, engine)
    return flow


def _dispatch(app: Celery, step: Dispatch | None) -> str:
    if step is None:
        return "nothing to run"
    chord(
        (app.signature("lethe.train_shard", args=(step.job_id, shard, step.attempt)) for shard in step.shards),
        app.signature("lethe.finish_job", args=(step.job_id, step.attempt)),
        app=app,
    ).on_error(app.signature("lethe.job_failed", args=(step.job_id,))).delay()
    return f"dispatched {len(step.shards)} shards"


TRANSIENT_RETRIES = 8  # 1, 2, 4, ... 30 s: about three minutes of database or broker outage


def _retrying(task, step):
    """Run ``step()``; a transient fault (``app.faults``) re-runs the task after a
    back-off, as every step is idempotent. What still fails goes to the job's failure
    path, which counts it only if it is not transient."""
    try:
        return step()
    except Exception as exc:
        if not faults.is_transient(exc) or task.request.retries >= TRANSIENT_RETRIES or task.request.is_eager:
            raise
        wait = min(2 ** task.request.retries, 30)
        log.warning("%s: transient %s, retrying in %s s", task.name, type(exc).__name__, wait)
        raise task.retry(exc=exc, countdown=wait, max_retries=TRANSIENT_RETRIES) from None


def register(app: Celery) -> None:
    """Register Lethe's tasks on ``app`` (each closes over it, so it finds its settings)."""

    @app.task(name="lethe.advance", shared=False, bind=True)
    def advance(self, model: str, trace: list[str] | None = None) -> str:
        """Start (or resume) the model's next job, if it has one and its dataset is free.
        ``trace``: the request ids of the HTTP requests that made the work (for logs)."""
        with logs.bind(task=self.name, model=model, request_ids=trace):
            return _retrying(self, lambda: _dispatch(app, job_flow(app).advance(model)))

    @app.task(name="lethe.train_shard", shared=False, bind=True)
    def train_shard(self, job_id: str, shard: int, attempt: int = 1) -> dict:
        """Train (or approximately unlearn) one shard of the job's plan."""
        with logs.bind(task=self.name):
            return _retrying(self, lambda: job_flow(app).run_shard(job_id, shard, attempt))

    @app.task(name="lethe.finish_job", shared=False, bind=True)
    def finish_job(self, results: list[dict], job_id: str, attempt: int = 1) -> str:
        """Verify the candidate, publish it or fall back to exact, complete the job."""
        with logs.bind(task=self.name):
            return _retrying(self, lambda: _dispatch(app, job_flow(app).finish(job_id, attempt, results)))

    @app.task(name="lethe.job_failed", shared=False)
    def job_failed(request, exc, traceback, job_id: str) -> None:
        """Chord error callback: the job fails with the shard's error as its reason (not
        counted when transient). Celery calls it with (request, exc, traceback), so it
        is not bound; if the database is down here too, the job keeps running until its
        lease runs out and the reconciler resumes it."""
        job_flow(app).fail(job_id, exc)
