"""The database side of running jobs: claim work for a model, keep its lease, record its
plan and attempts (``outcomes`` finishes or fails it).
Each function works in the caller's transaction (the job flow's ``session_scope``).

A job trains a model or removes owners from it. Only one job at a time changes the
models of one dataset: the job holds a lease on the dataset row and its workers renew
it. A lease that runs out means the job's worker died, and the next ``advance`` for
that model resumes the job. Deletion requests that arrive while a job runs stay
``pending`` and are coalesced into the model's next job.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.audit.service import Event, append, append_many
from app.errors import not_found
from app.outbox import enqueue_advance, unsent_advances
from app.statuses import JobKind, JobStatus, ModelStatus, OutcomeStatus, RequestStatus
from app.tables import (
    DatasetRow,
    DeletionOutcomeRow,
    DeletionRequestRow,
    JobRow,
    ModelRow,
    utcnow,
)
from workers.engine.ledger import Erasure

WORKER = "worker"
log = logging.getLogger("lethe.worker")
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def ready_to_run(now):
    """Pending outcomes a job may take now (a retry waits for its ``retry_at``)."""
    return (DeletionOutcomeRow.status == OutcomeStatus.PENDING) & (
        DeletionOutcomeRow.retry_at.is_(None) | (DeletionOutcomeRow.retry_at <= now))


@dataclass
class Claim:
    job_id: str
    kind: JobKind
    model: str
    state: dict | None  # the job's saved state (plan and attempt) when it is resumed
    owners: dict[str, list[str]]  # request id -> owner ids
    methods: list[str]

    @property
    def owner_ids(self) -> list[str]:
        return sorted({o for owners in self.owners.values() for o in owners})

    @property
    def request_ids(self) -> list[str]:
        return list(self.owners)


def job_method(methods: list[str]) -> str:
    """One method for a job that coalesces requests: exact if any request asks for it
    (it satisfies every request), the shared method if all agree, else auto."""
    if not methods or "exact" in methods:
        return "exact"
    return methods[0] if len(set(methods)) == 1 else "auto"


def claim(session: Session, model: str, lease_seconds: float, max_requests: int = 100) -> Claim | None:
    """Pick this model's job to run now (a queued or stalled one, or a new one for its
    pending deletions, at most ``max_requests`` of them), take the dataset lease for it
    and mark it running.

    Returns None when there is nothing to do or another job holds the lease.
    """
    m = session.get(ModelRow, model)
    if m is None:
        return None
    # Locked: a stale worker failing or completing this job (``outcomes``) waits for this
    # claim to commit and then sees the outcomes it attached, or this claim waits for
    # that to commit and no longer finds the job active.
    job = session.scalars(
        select(JobRow).where(JobRow.model == model, JobRow.status.in_(ACTIVE)).order_by(JobRow.created_at)
        .with_for_update()
    ).first()
    now = utcnow()
    requeue_orphans(session, model, now)
    if job is None:
        pending = session.scalars(
            select(DeletionOutcomeRow.request_id).where(DeletionOutcomeRow.model == model, ready_to_run(now)).limit(1)
        ).first()
        if pending is None:
            return None
    job_id = job.id if job is not None else str(uuid.uuid4())
    took = session.execute(
        update(DatasetRow)
        .where(DatasetRow.name == m.dataset, or_(DatasetRow.busy_job.is_(None), DatasetRow.busy_until < now))
        .values(busy_job=job_id, busy_until=now + timedelta(seconds=lease_seconds))
    ).rowcount
    if not took:
        return None  # nothing was written: the lease is another job's
    if job is None:
        job = JobRow(id=job_id, kind=JobKind.UNLEARN, model=model, status=JobStatus.QUEUED, created_at=now)
        session.add(job)
    resumed = job.status == JobStatus.RUNNING
    job.status, job.heartbeat_at = JobStatus.RUNNING, now
    job.started_at = job.started_at or now
    if job.kind == JobKind.UNLEARN and job.plan is None:
        # Coalesce what is waiting, oldest first, up to max_requests in all: a job resumed
        # before it was planned must not keep growing (and take longer to plan each time).
        room = max_requests - session.scalar(
            select(func.count()).select_from(DeletionOutcomeRow).where(DeletionOutcomeRow.job_id == job.id))
        if room > 0:
            waiting = session.scalars(
                select(DeletionOutcomeRow.request_id).where(DeletionOutcomeRow.model == model, ready_to_run(now))
                .order_by(DeletionOutcomeRow.updated_at, DeletionOutcomeRow.request_id).limit(room)).all()
            session.execute(
                update(DeletionOutcomeRow)
                .where(DeletionOutcomeRow.model == model, DeletionOutcomeRow.request_id.in_(waiting))
                .values(status=OutcomeStatus.RUNNING, job_id=job.id, updated_at=now, retry_at=None)
            )
    if job.kind == JobKind.TRAIN:
        m.status = ModelStatus.TRAINING
    session.flush()
    rows = session.execute(
        select(DeletionRequestRow)
        .join(DeletionOutcomeRow, DeletionOutcomeRow.request_id == DeletionRequestRow.id)
        .where(DeletionOutcomeRow.job_id == job.id)
        .order_by(DeletionRequestRow.created_at)
    ).scalars().all()
    append(session, "job.resumed" if resumed else "job.started", actor=WORKER, model=model,
           data={"job_id": job.id, "kind": job.kind, "requests": [r.id for r in rows]})
    for r in rows:
        if r.status == RequestStatus.QUEUED:
            r.status = RequestStatus.RUNNING
            append(session, "request.running", actor=WORKER, owner_id=r.owner_id, request_id=r.id, model=model,
                   data={"job_id": job.id})
    return Claim(job.id, JobKind(job.kind), model, job.plan, {r.id: [r.owner_id] for r in rows}, [r.method for r in rows])


def requeue_orphans(session: Session, model: str, now) -> int:
    """Outcomes left running under a job that has ended are pending again, so the next
    job takes them; how many. (Before claims locked the job row, a stale worker's
    failure could race a claim that had resumed the same job and leave the outcomes
    the claim attached running for ever.)"""
    active = select(JobRow.id).where(JobRow.model == model, JobRow.status.in_(ACTIVE))
    orphans = session.execute(
        update(DeletionOutcomeRow)
        .where(DeletionOutcomeRow.model == model, DeletionOutcomeRow.status == OutcomeStatus.RUNNING,
               or_(DeletionOutcomeRow.job_id.is_(None), DeletionOutcomeRow.job_id.not_in(active)))
        .values(status=OutcomeStatus.PENDING, job_id=None, retry_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if orphans:
        log.warning("%d outcomes of %s were running under an ended job: pending again", orphans, model)
    return orphans


def cover_dataset(session: Session, *, model: str, dataset: str, request_ids: list[str]) -> list[str]:
    """Erasing raw rows changes the dataset under every model on it. Give each request an
    outcome on every other trained (or training) model of ``dataset`` it lacks — one
    trained after the request was accepted — so that no model keeps serving erased rows
    unnoticed (audit ``request.models_added``). The models that got outcomes."""
    if not request_ids:
        return []
    candidates = [m.name for m in session.scalars(select(ModelRow).where(
        ModelRow.dataset == dataset, ModelRow.name != model, ModelRow.status != ModelStatus.FAILED))
        if m.latest_version is not None or m.status == ModelStatus.TRAINING]
    if not candidates:
        return []
    have = {(r, m) for r, m in session.execute(select(DeletionOutcomeRow.request_id, DeletionOutcomeRow.model)
                                               .where(DeletionOutcomeRow.request_id.in_(request_ids)))}
    now, touched = utcnow(), set()
    for request in session.scalars(select(DeletionRequestRow).where(DeletionRequestRow.id.in_(request_ids))
                                   .order_by(DeletionRequestRow.id)):
        added = [name for name in candidates if (request.id, name) not in have]
        for name in added:
            session.add(DeletionOutcomeRow(request_id=request.id, model=name, status=OutcomeStatus.PENDING,
                                           method=request.method, updated_at=now, attempts=0))
        if added:
            touched.update(added)
            append(session, "request.models_added", actor=WORKER, owner_id=request.owner_id, request_id=request.id,
                   model=model, data={"models": added, "why": "trained on the dataset whose raw rows this request "
                                      "erased, after the request was accepted"})
    for name in sorted(touched):
        enqueue_advance(session, name)
    return sorted(touched)


def renew_lease(session: Session, job_id: str, lease_seconds: float, progress: str | None = None,
                shard: int | None = None, state: dict | None = None) -> bool:
    """Extend the job's dataset lease; False if the job no longer holds it. ``state``:
    shard ``shard``'s progress, merged into the job's ``shard_progress`` (the row is
    locked: the shards' heartbeats run in several workers at once)."""
    job = session.get(JobRow, job_id, with_for_update=state is not None)
    if job is None or job.status != JobStatus.RUNNING:
        return False
    now = utcnow()
    if progress is not None:
        job.progress = progress[:500]
    if state is not None and shard is not None:
        job.shard_progress = {**(job.shard_progress or {}), str(shard): {**state, "updated_at": now.isoformat()}}
    job.heartbeat_at = now
    return bool(session.execute(
        update(DatasetRow).where(DatasetRow.busy_job == job_id).values(busy_until=now + timedelta(seconds=lease_seconds))
    ).rowcount)


def job_model(session: Session, job_id: str) -> str | None:
    job = session.get(JobRow, job_id)
    return job.model if job is not None else None


def request_owners(session: Session, request_ids: list[str]) -> dict[str, str]:
    """Request id -> owner id."""
    if not request_ids:
        return {}
    return dict(session.execute(select(DeletionRequestRow.id, DeletionRequestRow.owner_id)
                                .where(DeletionRequestRow.id.in_(request_ids))).all())


def trace_ids(session: Session, request_ids: list[str]) -> list[str]:
    """The X-Request-IDs of the HTTP requests that accepted these deletions (for logs)."""
    if not request_ids:
        return []
    return sorted({t for t in session.scalars(select(DeletionRequestRow.trace_id).where(
        DeletionRequestRow.id.in_(list(request_ids)))) if t})


def running_state(session: Session, job_id: str) -> dict | None:
    """The saved state of a running job; None once it ended (or before it was planned)."""
    job = session.get(JobRow, job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return None
    return job.plan


def record_plan(session: Session, job_id: str, state: dict, erasures: list[Erasure] = (),
                dataset: str | None = None) -> None:
    """Save the job's state; audit each owner erasure (ids digest and count, never samples)."""
    job = session.get(JobRow, job_id)
    job.plan = state
    if not erasures:
        return
    append_many(session, [Event("dataset.owner_erased", WORKER, e.owner_id, None, job.model, None,
                                {"job_id": job_id, "dataset": dataset, "sample_count": len(e.sample_ids),
                                 "sample_ids_digest": e.digest, "erased_at": e.erased_at}) for e in erasures])


def record_attempt(session: Session, job_id: str, *, method: dict, parent: int | None, metrics: dict,
                   failures: list[str], phase: str = "gate", gaps: dict | None = None) -> None:
    """Audit one unlearning attempt of the job, for each of its requests: the method
    (``{"name", "config"}``), its metrics (numbers only) and the gate's verdict
    (``phase="gate"``), or its gap to an exact reference (``phase="spot_check"``)."""
    job = session.get(JobRow, job_id)
    data = {"job_id": job_id, "phase": phase, "method": method["name"], "config": method["config"],
            "parent": parent, "metrics": numbers(metrics)}
    if phase == "gate":
        data.update(passed=not failures, failures=failures)
    if gaps is not None:
        data["gap_to_exact"] = gaps
    requests = session.execute(
        select(DeletionRequestRow.id, DeletionRequestRow.owner_id)
        .join(DeletionOutcomeRow, DeletionOutcomeRow.request_id == DeletionRequestRow.id)
        .where(DeletionOutcomeRow.job_id == job_id)
    ).all()
    kind = "unlearning.attempt" if phase == "gate" else "unlearning.spot_check"
    for request_id, owner_id in requests:
        append(session, kind, actor=WORKER, owner_id=owner_id, request_id=request_id, model=job.model, data=data)
    if not requests:
        append(session, kind, actor=WORKER, model=job.model, data=data)


def numbers(metrics: dict) -> dict:
    """Only numbers and short ids go to the audit log (nested: the parent's ``no_op``
    metrics, the ``gate``'s verdict and estimates)."""
    return {k: numbers(v) if isinstance(v, dict) else v for k, v in metrics.items()
            if isinstance(v, (int, float, str, list, dict)) and k != "test_predictions"}


def stalled_models(session: Session) -> list[str]:
    """Models with work waiting whose dataset is free or whose lease ran out (a dead worker)."""
    now = utcnow()
    free = select(DatasetRow.name).where(or_(DatasetRow.busy_job.is_(None), DatasetRow.busy_until < now))
    waiting = or_(
        ModelRow.name.in_(select(DeletionOutcomeRow.model).where(
            ready_to_run(now) | (DeletionOutcomeRow.status == OutcomeStatus.RUNNING))),
        ModelRow.name.in_(select(JobRow.model).where(JobRow.status.in_(ACTIVE))),
    )
    return list(session.scalars(select(ModelRow.name).where(ModelRow.dataset.in_(free), waiting)))


def requeue_stalled(session: Session) -> None:
    """Queue an ``advance`` for every stalled model that has none waiting in the outbox
    (the reconciler: a lost message or a dead worker's job is picked up again)."""
    unsent = unsent_advances(session)
    for model in stalled_models(session):
        if model not in unsent:
            enqueue_advance(session, model)


def view(session: Session, *, caller, job_id: str) -> dict:
    """A job as ``GET /v1/jobs/{id}`` shows it: status, phase, each shard's progress and
    the ETA. An admin sees every job; a client only the jobs serving its own requests
    (another's is 404, as if it did not exist)."""
    job = session.get(JobRow, job_id)
    if job is not None and not caller.is_admin:
        mine = session.scalar(select(func.count()).select_from(DeletionOutcomeRow).join(
            DeletionRequestRow, DeletionRequestRow.id == DeletionOutcomeRow.request_id).where(
            DeletionOutcomeRow.job_id == job_id, DeletionRequestRow.caller == caller.key_id))
        job = job if mine else None
    if job is None:
        raise not_found("job_not_found", f"no job {job_id!r}")
    saved = job.plan or {}
    plan = saved.get("plan", saved)  # the typed state, or one saved before it (a flat plan)
    planned = [s["shard"] for s in plan.get("shards", []) if s.get("status") in ("trained", "retrained", "approximate")]
    shards = {int(k): v for k, v in (job.shard_progress or {}).items()}
    attempt = (saved.get("attempt") or {}).get("number", 1)
    current = {k: v for k, v in shards.items() if v.get("attempt", attempt) == attempt}
    done = sum(1 for v in current.values() if v.get("phase") == "done")
    etas = [v["eta_s"] for v in current.values() if v.get("phase") == "training" and "eta_s" in v]
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        phase = str(job.status)
    elif job.status == JobStatus.QUEUED or not saved:
        phase = "queued" if job.status == JobStatus.QUEUED else "planning"
    elif planned and done == len(planned):
        phase = "verifying"  # measuring the candidate, the gate, publishing
    else:
        phase = "running"
    return {
        "id": job.id, "kind": job.kind, "model": job.model, "status": job.status, "phase": phase,
        "attempt": attempt, "progress": job.progress, "shards_total": len(planned), "shards_done": done,
        "shards": [{"shard": k, **v} for k, v in sorted(current.items())],
        "eta_s": max(etas) if etas else None, "error": job.error, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
    }

