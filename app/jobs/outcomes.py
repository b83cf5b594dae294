"""How a job ends: completed (with the version it published, if any) or failed; the
deletion requests it covers, their outcomes and the audit trail follow, and the dataset
is freed for the next job. Each function works in the caller's transaction."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit.service import append
from app.deletions import evidence
from app.deletions.service import published_methods
from app.jobs.service import WORKER, numbers
from app.outbox import enqueue_advance
from app.statuses import JobKind, JobStatus, ModelStatus, OutcomeStatus, RequestStatus
from app.tables import DatasetRow, DeletionOutcomeRow, DeletionRequestRow, JobRow, ModelRow, ModelVersionRow, utcnow
from app.webhooks.service import emit


def _release(session: Session, job: JobRow) -> None:
    """Free the dataset and queue every model on it that has work waiting."""
    dataset = session.get(ModelRow, job.model).dataset
    session.execute(update(DatasetRow).where(DatasetRow.busy_job == job.id).values(busy_job=None, busy_until=None))
    waiting = session.scalars(
        select(ModelRow.name).where(ModelRow.dataset == dataset).where(
            ModelRow.name.in_(select(DeletionOutcomeRow.model).where(DeletionOutcomeRow.status == OutcomeStatus.PENDING))
            | ModelRow.name.in_(select(JobRow.model).where(JobRow.status == JobStatus.QUEUED))
        )
    ).all()
    for name in waiting:
        enqueue_advance(session, name)


def complete(session: Session, job_id: str, record: dict | None) -> None:
    """Mark the job done. ``record`` is the published version (None: nothing to remove,
    the latest version already excludes the owners)."""
    job = session.get(JobRow, job_id, with_for_update=True)  # serialised with ``claim``
    if job is None or job.status == JobStatus.COMPLETED:
        return
    now = utcnow()
    model = session.get(ModelRow, job.model)
    version = record["version"] if record else model.latest_version
    if record is not None:
        record_version(session, job, record)
        model.latest_version = record["version"]
    if job.kind == JobKind.TRAIN:
        model.status, model.error = ModelStatus.READY, None
    job.status, job.version, job.finished_at = JobStatus.COMPLETED, version, now
    seconds = (now - job.started_at).total_seconds() if job.started_at else None
    metrics = dict(record["metrics"]) if record else {}
    for outcome in session.scalars(select(DeletionOutcomeRow).where(DeletionOutcomeRow.job_id == job_id)):
        outcome.status, outcome.version, outcome.metrics = OutcomeStatus.COMPLETED, version, metrics
        outcome.seconds = round(seconds, 3) if seconds is not None else None
        request = session.get(DeletionRequestRow, outcome.request_id)
        append(session, "request.model_unlearned", actor=WORKER, owner_id=request.owner_id, request_id=request.id,
               model=job.model, version=version,
               data={"job_id": job_id, "method": outcome.method, "published": record is not None,
                     "manifest_digest": record["manifest_digest"] if record else None,
                     "metrics": numbers(metrics), "seconds": outcome.seconds})
        refresh_request(session, request)
    append(session, "job.completed", actor=WORKER, model=job.model, version=version,
           data={"job_id": job_id, "kind": job.kind, "seconds": seconds})
    _release(session, job)


def record_version(session: Session, job: JobRow, record: dict) -> None:
    exists = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.model == job.model, ModelVersionRow.version == record["version"])
    ).first()
    if exists:
        return
    requests = record["removed"]["requests"]
    session.add(ModelVersionRow(
        model=job.model, version=record["version"], parent=record["parent"], kind=record["kind"],
        method=record.get("method", {}).get("name", "exact"), manifest_digest=record["manifest_digest"],
        record_sha256=record["record_sha256"], n_samples=record["n_samples"], metrics=record["metrics"],
        requests=requests, job_id=job.id,
    ))
    append(session, "model.version_published", actor=WORKER, model=job.model, version=record["version"],
           data={"job_id": job.id, "parent": record["parent"], "kind": record["kind"],
                 "method": record.get("method", {}).get("name"), "exact": record.get("exact", True),
                 "manifest_digest": record["manifest_digest"], "record_sha256": record["record_sha256"],
                 "n_samples": record["n_samples"], "requests": requests,
                 "removed_sample_count": record["removed"]["sample_count"],
                 "removed_sample_ids_digest": record["removed"].get("sample_ids_digest"),
                 "metrics": numbers(record["metrics"])})
    emit(session, "model.version_published", {
        "model": job.model, "version": record["version"], "parent": record["parent"], "kind": record["kind"],
        "method": record.get("method", {}).get("name", "exact"), "exact": record.get("exact", True),
        "requests": requests, "test_accuracy": record["metrics"].get("test_accuracy")})


TRANSIENT_BACKOFF_CAP = 3600.0  # a transient retry waits at most an hour


def _wait(backoff_seconds: float, failures: int, cap: float) -> float:
    """The n-th failure's back-off: ``backoff_seconds * 2^(n-1)``, at most ``cap``."""
    return min(backoff_seconds * 2 ** min(max(failures, 1) - 1, 30), cap)


def fail(session: Session, job_id: str, reason: str, *, max_attempts: int = 1, backoff_seconds: float = 0.0,
         transient: bool = False, max_transient: int = 20) -> list[str]:
    """Mark the job failed with ``reason``. Each of its outcomes is tried again later
    (pending, after ``backoff_seconds * 2^(n-1)`` for the n-th failure) until it failed
    ``max_attempts`` times; then its request fails for this model. A ``transient``
    failure (the database or broker blinked) does not count as an attempt: it is
    counted apart, with its own growing back-off (at most an hour), and only after
    ``max_transient`` of them in a row does one count. A training job that fails
    transiently is queued again instead (its model keeps training), and so is a full
    retrain (the model keeps serving its latest version either way). Returns the
    requests whose outcome failed for good."""
    job = session.get(JobRow, job_id, with_for_update=True)  # serialised with ``claim``
    if job is None or job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        return []
    reason = reason[:2000]
    now = utcnow()
    if job.kind in (JobKind.TRAIN, JobKind.RETRAIN) and transient and (job.transient_failures or 0) < max_transient:
        job.transient_failures = (job.transient_failures or 0) + 1
        job.status, job.error, job.heartbeat_at = JobStatus.QUEUED, reason, None
        append(session, "job.requeued", actor=WORKER, model=job.model,
               data={"job_id": job_id, "kind": job.kind, "transient_failures": job.transient_failures, "reason": reason})
        _release(session, job)
        return []
    job.status, job.error, job.finished_at = JobStatus.FAILED, reason, now
    if job.kind == JobKind.TRAIN:
        model = session.get(ModelRow, job.model)
        model.status, model.error = ModelStatus.FAILED, reason
    failed = []
    for outcome in session.scalars(select(DeletionOutcomeRow).where(DeletionOutcomeRow.job_id == job_id)):
        outcome.error = reason
        counted = not transient
        if transient:
            outcome.transient_failures = (outcome.transient_failures or 0) + 1
            counted = outcome.transient_failures > max_transient
        else:
            outcome.transient_failures = 0
        if counted:
            outcome.attempts = (outcome.attempts or 0) + 1
        request = session.get(DeletionRequestRow, outcome.request_id)
        if not counted or outcome.attempts < max_attempts:
            outcome.status, outcome.job_id = OutcomeStatus.PENDING, None
            wait = (_wait(backoff_seconds, outcome.transient_failures, TRANSIENT_BACKOFF_CAP) if not counted
                    else _wait(backoff_seconds, outcome.attempts, 24 * 3600.0))  # at most a day
            outcome.retry_at = now + timedelta(seconds=wait)
            append(session, "request.retry_scheduled", actor=WORKER, owner_id=request.owner_id, request_id=request.id,
                   model=job.model, data={"job_id": job_id, "attempt": outcome.attempts, "transient": not counted,
                                          "transient_failures": outcome.transient_failures,
                                          "retry_at": outcome.retry_at.isoformat(), "reason": reason})
        else:
            outcome.status = OutcomeStatus.FAILED
            failed.append(request.id)
        refresh_request(session, request)
    append(session, "job.failed", actor=WORKER, model=job.model, data={"job_id": job_id, "kind": job.kind, "reason": reason})
    _release(session, job)
    return failed


def refresh_request(session: Session, request: DeletionRequestRow) -> None:
    """Derive the request's status from its outcomes; audit a change."""
    session.flush()
    states = session.scalars(select(DeletionOutcomeRow.status).where(DeletionOutcomeRow.request_id == request.id)).all()
    if any(s in (OutcomeStatus.PENDING, OutcomeStatus.RUNNING) for s in states):
        new = RequestStatus.RUNNING if OutcomeStatus.RUNNING in states else RequestStatus(request.status)
    elif OutcomeStatus.FAILED in states:
        new = RequestStatus.FAILED
    else:
        new = RequestStatus.COMPLETED
    if new == request.status:
        return
    request.status = new
    data = {}
    if new in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        request.completed_at = utcnow()
    if new == RequestStatus.FAILED:
        failed = session.scalars(select(DeletionOutcomeRow).where(
            DeletionOutcomeRow.request_id == request.id, DeletionOutcomeRow.status == OutcomeStatus.FAILED)).all()
        request.failure_reason = "; ".join(f"{o.model}: {o.error}" for o in failed)[:2000]
        data["reason"] = request.failure_reason
    append(session, f"request.{new}", actor=WORKER, owner_id=request.owner_id, request_id=request.id, data=data)
    if new in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        emit(session, f"request.{new}", _request_event(session, request))
    if new in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        # Every outcome has ended: the forget set is needed no more.
        evidence.destroy(session, request, f"request {new}", actor=WORKER)


def _request_event(session: Session, request: DeletionRequestRow) -> dict:
    """A finished request as its webhook tells it: ids, statuses, versions and methods; no
    owner id and no failure text (an error's text may name one: the API has it)."""
    outcomes = session.scalars(select(DeletionOutcomeRow).where(DeletionOutcomeRow.request_id == request.id)
                               .order_by(DeletionOutcomeRow.model)).all()
    produced = published_methods(session=session, outcomes=list(outcomes))
    return {"request_id": request.id, "status": str(request.status), "completed_at": request.completed_at,
            "models": [{"model": o.model, "status": o.status, "version": o.version, "method": o.method,
                        "published_method": produced.get((o.model, o.version))} for o in outcomes]}
