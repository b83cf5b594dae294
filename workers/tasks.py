"""Celery tasks: thin. Each takes ids, opens its own session, calls the engine, records.

The path of one job::

    advance(model)              claim the model's next job, plan it (erasing owners first)
      -> chord(train_shard(job, shard) for each shard to (re)train)
      -> finish_job(job)        publish one version, complete the requests
      (any failure -> job_failed(job))

Every step may run twice (late acknowledgement redelivers after a crash): claiming
is guarded by the dataset lease, shard training is deterministic, and ``finish`` publishes
at most one version per job.
"""
from __future__ import annotations

import logging
import threading
from functools import lru_cache

from celery import chord

from app.db import session_scope
from app.jobs import service as jobs
from app.settings import get_settings
from app.tables import JobRow, ModelRow
from models_store import StoreError
from workers.celery_app import celery_app
from workers.engine import EngineError
from workers.engine.engine import Engine
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig

log = logging.getLogger("lethe.worker")


_heartbeat: _Heartbeat | None = None  # the running shard's, so engine progress reaches the job row


def _progress(msg: str) -> None:
    log.info(msg)
    if _heartbeat is not None:
        _heartbeat.progress = msg


@lru_cache
def engine() -> Engine:
    # Built on first use inside the pool process, never in the parent before fork.
    settings = get_settings()
    return Engine(settings.data_dir, store_url=settings.store_url, device=settings.device, progress=_progress)


def _lease_seconds() -> float:
    return max(2.0, get_settings().lease_seconds)


class _Heartbeat:
    """Renews the job's dataset lease from a side thread while a long step runs."""

    def __init__(self, job_id: str):
        self.job_id, self._stop = job_id, threading.Event()
        self.progress: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        global _heartbeat
        _heartbeat = self
        self._thread.start()
        return self

    def __exit__(self, *exc):
        global _heartbeat
        _heartbeat = None
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):
        # Often enough to show training progress, and well inside the lease.
        while not self._stop.wait(min(_lease_seconds() / 4, 5.0)):
            try:
                with session_scope() as s:
                    jobs.renew_lease(s, self.job_id, _lease_seconds(), self.progress)
            except Exception:
                log.exception("could not renew the lease of job %s", self.job_id)


@celery_app.task(name="lethe.advance")
def advance(model: str) -> str:
    """Start (or resume) the model's next job, if it has one and its dataset is free."""
    with session_scope() as s:
        claim = jobs.claim(s, model, _lease_seconds())
    if claim is None:
        return "idle"
    plan = claim.plan
    try:
        if plan is None:
            plan, erasures = _plan(claim)
            with session_scope() as s:
                if plan is None:
                    jobs.complete(s, claim.job_id, None)
                    return "nothing to remove"
                jobs.record_plan(s, claim.job_id, plan, erasures)
    except Exception as exc:  # the job fails with a reason; it must not stay running
        log.exception("planning job %s failed", claim.job_id)
        with session_scope() as s:
            jobs.fail(s, claim.job_id, _reason(exc))
        return "failed"
    to_train = [e["shard"] for e in plan["shards"] if e["status"] != "reused"]
    chord(
        (train_shard.s(claim.job_id, shard) for shard in to_train),
        finish_job.s(claim.job_id),
    ).on_error(job_failed.s(claim.job_id)).delay()
    return f"dispatched {len(to_train)} shards"


def _plan(claim: jobs.Claim) -> tuple[dict | None, list[dict]]:
    eng = engine()
    if claim.kind == "train":
        with session_scope() as s:
            m = s.get(ModelRow, claim.model)
            spec = dict(dataset=m.dataset, architecture=m.architecture,
                        strategy=Strategy(**m.strategy), config=TrainConfig(**m.recipe))
        return eng.plan_train(claim.model, job=claim.job_id, **spec), []
    plan = eng.plan_unlearn(claim.model, claim.owner_ids, requests=claim.request_ids, job=claim.job_id)
    dataset = eng.store.model_spec(claim.model)["dataset"]
    erasures = [
        {"owner_id": e.owner_id, "dataset": dataset, "sample_count": len(e.sample_ids), "digest": e.digest,
         "erased_at": e.erased_at}
        for owner in claim.owner_ids for e in eng.dataset(dataset).erasures(owner)
    ]
    return plan, erasures


def _job_plan(job_id: str) -> dict | None:
    with session_scope() as s:
        job = s.get(JobRow, job_id)
        return job.plan if job is not None and job.status == "running" else None


@celery_app.task(name="lethe.train_shard")
def train_shard(job_id: str, shard: int) -> dict:
    """Train one shard of the job's plan; returns its new checkpoints' digests."""
    plan = _job_plan(job_id)
    if plan is None:
        return {"shard": shard, "checkpoints": [], "skipped": True}
    with _Heartbeat(job_id):
        return {"shard": shard, "checkpoints": engine().run_shard(plan, shard)}


@celery_app.task(name="lethe.finish_job")
def finish_job(results: list[dict], job_id: str) -> int | None:
    """Publish the job's version from its shards' checkpoints and complete its requests."""
    plan = _job_plan(job_id)
    if plan is None or any(r.get("skipped") for r in results):
        return None
    try:
        record = engine().finish(plan, {r["shard"]: r["checkpoints"] for r in results})
    except (EngineError, StoreError) as exc:
        with session_scope() as s:
            jobs.fail(s, job_id, _reason(exc))
        return None
    with session_scope() as s:
        jobs.complete(s, job_id, record)
    return record["version"]


@celery_app.task(name="lethe.job_failed")
def job_failed(request, exc, traceback, job_id: str) -> None:
    """Chord error callback: the job fails with the shard's error as its reason."""
    with session_scope() as s:
        jobs.fail(s, job_id, _reason(exc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return f"{exc.code}: {exc.detail}"
    return f"{type(exc).__name__}: {exc}"
