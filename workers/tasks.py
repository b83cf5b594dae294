"""Celery tasks: thin. Each takes ids, opens its own session, calls the engine, records.

The path of one job::

    advance(model)              claim the model's next job, plan it (erasing owners first)
      -> chord(train_shard(job, shard) for each shard to (re)train or unlearn)
      -> finish_job(job)        verify, publish one version, complete the requests
      (any failure -> job_failed(job))

An approximate plan's candidate must pass the verify-then-publish gate; if it fails,
``finish_job`` records the attempt, re-plans the job as exact SISA retraining (attempt
2) and dispatches that chord instead. With ``spot_check_rate``, a passed approximate
version may also get an unpublished exact reference (phase ``spot_check``) whose gap to
it is audited.

Every step may run twice (late acknowledgement redelivers after a crash): claiming
is guarded by the dataset lease, shard training is deterministic, and ``finish`` publishes
at most one version per job.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from functools import lru_cache

from celery import chord

from app.db import session_scope
from app.jobs import service as jobs
from app.settings import get_settings
from app.tables import JobRow, ModelRow
from models_store import StoreError
from workers.celery_app import celery_app
from workers.engine import EngineError, gate, metrics, verification
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
        engine().scratch.drop(claim.job_id)
        return "failed"
    return _dispatch(claim.job_id, plan)


def _dispatch(job_id: str, plan: dict) -> str:
    to_train = [e["shard"] for e in plan["shards"] if e["status"] != "reused"]
    attempt = plan.get("attempt", 1)
    chord(
        (train_shard.s(job_id, shard, attempt) for shard in to_train),
        finish_job.s(job_id, attempt),
    ).on_error(job_failed.s(job_id)).delay()
    return f"dispatched {len(to_train)} shards"


def _plan(claim: jobs.Claim) -> tuple[dict | None, list[dict]]:
    eng = engine()
    if claim.kind == "train":
        with session_scope() as s:
            m = s.get(ModelRow, claim.model)
            spec = dict(dataset=m.dataset, architecture=m.architecture,
                        strategy=Strategy(**m.strategy), config=TrainConfig(**m.recipe))
        return eng.plan_train(claim.model, job=claim.job_id, **spec), []
    requested = jobs.job_method(claim.methods)
    method = get_settings().auto_method if requested == "auto" else requested
    mode = "sisa" if method == "exact" else "approximate"
    plan = eng.plan_unlearn(claim.model, claim.owner_ids, requests=claim.request_ids, job=claim.job_id,
                            mode=mode, method=None if method == "exact" else method)
    if plan is not None:
        plan.update(attempt=1, requested_method=requested)
    dataset = eng.store.model_spec(claim.model)["dataset"]
    erasures = [
        {"owner_id": e.owner_id, "dataset": dataset, "sample_count": len(e.sample_ids), "digest": e.digest,
         "erased_at": e.erased_at}
        for owner in claim.owner_ids for e in eng.dataset(dataset).erasures(owner)
    ]
    return plan, erasures


def _job_plan(job_id: str, attempt: int | None = None) -> dict | None:
    """The running job's plan; None if the job ended or moved on to another attempt."""
    with session_scope() as s:
        job = s.get(JobRow, job_id)
        if job is None or job.status != "running" or job.plan is None:
            return None
        if attempt is not None and job.plan.get("attempt", 1) != attempt:
            return None
        return job.plan


@celery_app.task(name="lethe.train_shard")
def train_shard(job_id: str, shard: int, attempt: int = 1) -> dict:
    """Train (or approximately unlearn) one shard of the job's plan; returns its new
    checkpoints' digests and the seconds it took."""
    plan = _job_plan(job_id, attempt)
    if plan is None:
        return {"shard": shard, "checkpoints": [], "skipped": True}
    with _Heartbeat(job_id):
        started = time.perf_counter()
        made = engine().run_shard(plan, shard)
        return {"shard": shard, "checkpoints": made, "seconds": time.perf_counter() - started}


@celery_app.task(name="lethe.finish_job")
def finish_job(results: list[dict], job_id: str, attempt: int = 1) -> int | None:
    """Verify the job's candidate version, publish it (or fall back to exact), complete."""
    plan = _job_plan(job_id, attempt)
    if plan is None or any(r.get("skipped") for r in results):
        return None
    # Measuring the candidate takes a while: keep the lease, or the reconciler would
    # hand the job to another worker meanwhile.
    with _Heartbeat(job_id):
        return _finish(job_id, plan, results)


def _finish(job_id: str, plan: dict, results: list[dict]) -> int | None:
    eng = engine()
    if plan.get("phase") == "spot_check":
        return _finish_spot_check(job_id, plan, results)
    try:
        record = eng.published_by_job(plan)
        if record is None:
            record = eng.candidate(plan, {r["shard"]: r["checkpoints"] for r in results},
                                   {r["shard"]: r.get("seconds", 0.0) for r in results})
            if plan["kind"] == "approximate" and not _passes_gate(job_id, plan, record):
                return _fall_back_to_exact(job_id, plan, record)
            if plan.get("fallback_from"):
                record["metrics"]["fallback_gap"] = metrics.gaps(plan["fallback_from"]["metrics"], record["metrics"])
            record = eng.publish(plan, record)
            if plan["kind"] == "approximate" and random.random() < get_settings().spot_check_rate:
                return _start_spot_check(job_id, plan, record)
    except (EngineError, StoreError) as exc:
        with session_scope() as s:
            jobs.fail(s, job_id, _reason(exc))
        eng.scratch.drop(plan.get("scratch"))
        return None
    with session_scope() as s:
        jobs.complete(s, job_id, record)
    eng.scratch.drop(plan.get("scratch"))
    return record["version"]


def _passes_gate(job_id: str, plan: dict, record: dict) -> bool:
    settings = get_settings()
    thresholds = gate.Thresholds(settings.gate_ua_tolerance, settings.gate_mia_tolerance, settings.gate_max_ta_drop)
    parent = engine().version(plan["model"], plan["parent"])
    failures = gate.check(record["metrics"], parent["metrics"].get("test_accuracy"), thresholds)
    record["metrics"]["gate"] = {"passed": not failures, "failures": failures}
    with session_scope() as s:
        jobs.record_attempt(s, job_id, plan, record["metrics"], failures)
    return not failures


def _fall_back_to_exact(job_id: str, plan: dict, record: dict) -> None:
    """The approximate candidate failed the gate: plan attempt 2, exact SISA retraining
    from the same parent (the owners are already erased), and run it."""
    exact = engine().plan_unlearn(plan["model"], [], requests=plan["removal"]["requests"], job=job_id, mode="sisa")
    exact.update(attempt=plan.get("attempt", 1) + 1, requested_method=plan.get("requested_method"),
                 scratch=plan.get("scratch"),
                 fallback_from={"method": plan["method"], "metrics": jobs.numbers(record["metrics"])})
    with session_scope() as s:
        jobs.record_plan(s, job_id, exact, [])
    _dispatch(job_id, exact)
    return None


def _start_spot_check(job_id: str, plan: dict, record: dict) -> int:
    """Plan an exact retrain of the approximate version just published (attempt n + 1,
    never published) as its reference; the job's requests complete when it is done."""
    reference = engine().plan_unlearn(plan["model"], [], job=job_id, mode="sisa")
    reference.update(attempt=plan.get("attempt", 1) + 1, phase="spot_check", scratch=plan.get("scratch"),
                     removal=plan["removal"], method=plan["method"], requested_method=plan.get("requested_method"),
                     checked_version=record["version"])
    with session_scope() as s:
        jobs.record_plan(s, job_id, reference, [])
    _dispatch(job_id, reference)
    return record["version"]


def _finish_spot_check(job_id: str, plan: dict, results: list[dict]) -> int | None:
    """Compare the published approximate version with its exact reference; audit the gap."""
    eng = engine()
    published = eng.version(plan["model"], plan["checked_version"])
    try:
        reference = eng.candidate(plan, {r["shard"]: r["checkpoints"] for r in results},
                                  {r["shard"]: r.get("seconds", 0.0) for r in results})
        gaps = metrics.gaps(published["metrics"], reference["metrics"])
        gaps["kl_forget"] = verification.forget_kl(eng, plan, reference, published)
        rte = published["metrics"].get("rte_seconds")
        gaps["speed_up"] = round(reference["metrics"]["rte_seconds"] / rte, 2) if rte else None
    except (EngineError, StoreError) as exc:
        gaps = {"error": _reason(exc)}
    published["metrics"]["spot_check"] = gaps
    with session_scope() as s:
        jobs.record_attempt(s, job_id, plan, jobs.numbers(reference["metrics"]) if "error" not in gaps else {},
                            [], phase="spot_check", gaps=gaps)
        jobs.complete(s, job_id, published)
    eng.scratch.drop(plan.get("scratch"))
    return published["version"]


@celery_app.task(name="lethe.job_failed")
def job_failed(request, exc, traceback, job_id: str) -> None:
    """Chord error callback: the job fails with the shard's error as its reason."""
    with session_scope() as s:
        jobs.fail(s, job_id, _reason(exc))
    engine().scratch.drop(job_id)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return f"{exc.code}: {exc.detail}"
    return f"{type(exc).__name__}: {exc}"
