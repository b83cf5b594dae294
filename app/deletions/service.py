"""Deletion requests: accepted in one transaction with their audit events and outbox rows.

Requests are accepted in groups (``accept_many``): under load, one transaction
carries many requests — one commit, one turn on the audit chain's lock, and one
outbox row per model — instead of one each (group commit, see ``intake.py``).
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import insert, select, tuple_
from sqlalchemy.orm import Session

from app.audit.service import Event, append, append_many
from app.callers import Caller
from app.deletions.schemas import DeletionCreate
from app.errors import ApiError, not_found
from app.outbox import enqueue_advance
from app.statuses import ModelStatus, OutcomeStatus, RequestStatus
from app.tables import DeletionOutcomeRow, DeletionRequestRow, ModelRow, ModelVersionRow, utcnow
from app.webhooks.service import emit
from workers.engine.engine import Engine
from workers.engine.errors import MethodNotSupported
from workers.engine.planning import check_kind


def request_hash(body: DeletionCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


@dataclass
class Submission:
    caller: Caller
    body: DeletionCreate
    idempotency_key: str | None = None
    trace_id: str | None = None  # the HTTP request's X-Request-ID (app.logs): the logs follow it
    body_hash: str = field(init=False)

    def __post_init__(self):
        self.body_hash = request_hash(self.body)

    @property
    def key(self) -> tuple[str, str] | None:
        return (self.caller.key_id, self.idempotency_key) if self.idempotency_key is not None else None


@dataclass
class Accepted:
    request: DeletionRequestRow
    outcomes: list[DeletionOutcomeRow]
    replayed: bool


def _key_reused() -> ApiError:
    return ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")


class _Targets:
    """Resolves which models a request covers. The models are read once per batch, and
    each dataset's ledger is asked once per batch about all the batch's owners."""

    def __init__(self, session: Session, engine: Engine, owner_ids: list[str]):
        self.models = {m.name: m for m in session.scalars(select(ModelRow).order_by(ModelRow.name))}
        self._known = {d: engine.ledger(d).known_owners(owner_ids) for d in {m.dataset for m in self.models.values()}}

    def _knows(self, dataset: str, owner_id: str) -> bool:
        return owner_id in self._known[dataset]

    def __call__(self, body: DeletionCreate) -> tuple[list[str], list[str]]:
        """The models the request covers: the named ones, or every model (not failed) whose
        dataset holds or held the owner; and which of them were added although not named.
        Erasing the owner's raw rows changes their dataset for every model on it, so the
        other models on that dataset that learned from the owner are covered too."""
        names, added = self._models(body)
        for name in names:
            try:
                check_kind(body.method, self.models[name].strategy)
            except MethodNotSupported as exc:
                raise ApiError(422, exc.code, f"model {name!r}: {exc}") from None
        return names, added

    def _models(self, body: DeletionCreate) -> tuple[list[str], list[str]]:
        if body.models is not None:
            names = list(dict.fromkeys(body.models))
            missing = [n for n in names if n not in self.models]
            if missing:
                raise not_found("model_not_found", f"no model {missing[0]!r}")
            unknown = [n for n in names if not self._knows(self.models[n].dataset, body.owner_id)]
            if unknown:
                raise not_found("owner_not_found",
                                f"model {unknown[0]!r}'s dataset never held owner {body.owner_id!r}")
            datasets = {self.models[n].dataset for n in names}
            added = [m.name for m in self.models.values() if m.name not in names and m.dataset in datasets
                     and m.status != ModelStatus.FAILED]
            return names + added, added
        names = [m.name for m in self.models.values()
                 if m.status != ModelStatus.FAILED and self._knows(m.dataset, body.owner_id)]
        if not names:
            raise not_found("owner_not_found", f"no model's dataset holds owner {body.owner_id!r}")
        return names, []


def accept_many(*, session: Session, engine: Engine, subs: list[Submission],
                deadline: timedelta = timedelta(days=30)) -> list[Accepted | ApiError]:
    """Accept deletion requests in the caller's transaction; one result per submission.

    For each new request: the request row, one ``pending`` outcome per model, a
    ``request.accepted`` audit event, and (per model, once for the batch) an outbox row.
    A known ``Idempotency-Key`` replays its request; with a different body it is an error.
    """
    results: list[Accepted | ApiError | None] = [None] * len(subs)
    keys = {s.key for s in subs if s.key is not None}
    existing = {}
    if keys:
        rows = session.scalars(select(DeletionRequestRow).where(
            tuple_(DeletionRequestRow.caller, DeletionRequestRow.idempotency_key).in_(list(keys))))
        existing = {(r.caller, r.idempotency_key): r for r in rows}
    targets = _Targets(session, engine, [s.body.owner_id for s in subs])
    now = utcnow()
    first_with_key: dict[tuple[str, str], int] = {}
    requests, outcomes, events, models_touched, later = [], [], [], set(), []
    for i, sub in enumerate(subs):
        if sub.key in existing:
            row = existing[sub.key]
            results[i] = _key_reused() if row.request_hash != sub.body_hash else Accepted(row, [], True)
            continue
        if sub.key in first_with_key:
            later.append((i, first_with_key[sub.key]))  # the same key twice in one batch
            continue
        try:
            names, added = targets(sub.body)
        except ApiError as exc:
            results[i] = exc
            continue
        request = DeletionRequestRow(
            id=str(uuid.uuid4()), owner_id=sub.body.owner_id, caller=sub.caller.key_id, method=sub.body.method,
            reason=sub.body.reason, status=RequestStatus.QUEUED, idempotency_key=sub.idempotency_key, request_hash=sub.body_hash,
            failure_reason=None, created_at=now, updated_at=now, completed_at=None, due_at=now + deadline,
            trace_id=sub.trace_id,
        )
        mine = [DeletionOutcomeRow(request_id=request.id, model=m, status=OutcomeStatus.PENDING, method=sub.body.method,
                                   job_id=None, version=None, metrics=None, seconds=None, error=None, updated_at=now,
                                   attempts=0, retry_at=None)
                for m in names]
        requests.append(request)
        outcomes.extend(mine)
        models_touched.update(names)
        # The reason is free text and may hold personal data: the audit log keeps its hash only.
        events.append(Event("request.accepted", sub.caller.key_id, owner_id=sub.body.owner_id, request_id=request.id,
                            data={"models": names, "method": sub.body.method,
                                  **({"models_added": added, "why_added": "they were trained on the dataset whose "
                                      "raw rows this request erases"} if added else {}),
                                  "idempotency_key_given": sub.idempotency_key is not None,
                                  "reason_sha256": hashlib.sha256(sub.body.reason.encode()).hexdigest()
                                  if sub.body.reason else None}))
        results[i] = Accepted(request, mine, False)
        if sub.key is not None:
            first_with_key[sub.key] = i
    for i, j in later:
        first = results[j]
        results[i] = _key_reused() if subs[i].body_hash != subs[j].body_hash else Accepted(first.request, first.outcomes, True)
    replayed = [r for r in results if isinstance(r, Accepted) and r.replayed and not r.outcomes]
    if replayed:
        by_request: dict[str, list] = {}
        for o in session.scalars(select(DeletionOutcomeRow).where(
                DeletionOutcomeRow.request_id.in_([r.request.id for r in replayed])).order_by(DeletionOutcomeRow.model)):
            by_request.setdefault(o.request_id, []).append(o)
        for r in replayed:
            r.outcomes = by_request.get(r.request.id, [])
    if requests:
        # Core inserts (one executemany per table): the ORM's unit of work costs more
        # than the database here. The row objects stay transient; they shape the answers.
        session.execute(insert(DeletionRequestRow), [_columns(r) for r in requests])
        session.execute(insert(DeletionOutcomeRow), [_columns(o) for o in outcomes])
        traces = sorted({r.trace_id for r in requests if r.trace_id})
        for m in sorted(models_touched):
            enqueue_advance(session, m, trace=traces)
        append_many(session, events)
    return results


def _columns(row) -> dict:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def get(*, session: Session, caller: Caller, request_id: str) -> DeletionRequestRow:
    row = session.get(DeletionRequestRow, request_id)
    # Another caller's request is reported as missing, not forbidden: ids reveal nothing.
    if row is None or (not caller.is_admin and row.caller != caller.key_id):
        raise not_found("request_not_found", f"no deletion request {request_id!r}")
    return row


def list_for(*, session: Session, caller: Caller, owner_id: str | None, status: str | None,
             limit: int, overdue: bool = False) -> list[DeletionRequestRow]:
    """The caller's requests (an admin's: everyone's), newest first; ``overdue``: only
    those past their due time and not completed."""
    stmt = select(DeletionRequestRow)
    if overdue:
        stmt = stmt.where(DeletionRequestRow.due_at < utcnow(), DeletionRequestRow.status != RequestStatus.COMPLETED)
    if not caller.is_admin:
        stmt = stmt.where(DeletionRequestRow.caller == caller.key_id)
    if owner_id is not None:
        stmt = stmt.where(DeletionRequestRow.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(DeletionRequestRow.status == status)
    return list(session.scalars(stmt.order_by(DeletionRequestRow.created_at.desc()).limit(limit)))


def outcomes(*, session: Session, request_id: str) -> list[DeletionOutcomeRow]:
    return list(session.scalars(
        select(DeletionOutcomeRow).where(DeletionOutcomeRow.request_id == request_id).order_by(DeletionOutcomeRow.model)))


def is_overdue(row: DeletionRequestRow) -> bool:
    return row.due_at is not None and row.status != RequestStatus.COMPLETED and row.due_at < utcnow()


def mark_overdue(session: Session, *, actor: str, limit: int = 500) -> int:
    """Note each request newly past its due time and not completed, once: ``overdue_at``,
    a ``request.overdue`` audit event and webhook. How many were marked."""
    now = utcnow()
    rows = session.scalars(select(DeletionRequestRow).where(
        DeletionRequestRow.overdue_at.is_(None), DeletionRequestRow.due_at < now,
        DeletionRequestRow.status != RequestStatus.COMPLETED).limit(limit).with_for_update(skip_locked=True)).all()
    for row in rows:
        row.overdue_at = now
        append(session, "request.overdue", actor=actor, owner_id=row.owner_id, request_id=row.id,
               data={"due_at": row.due_at.isoformat(), "status": row.status})
        emit(session, "request.overdue", {"request_id": row.id, "status": row.status,
                                          "due_at": row.due_at, "created_at": row.created_at})
    return len(rows)


def retry(*, session: Session, caller: Caller, request_id: str) -> DeletionRequestRow:
    """Put a failed request's failed outcomes back in the queue, with fresh attempts."""
    row = get(session=session, caller=caller, request_id=request_id)
    if row.status != RequestStatus.FAILED:
        raise ApiError(409, "request_not_failed", f"deletion request {request_id!r} is {row.status}, not failed")
    now = utcnow()
    models = []
    for o in session.scalars(select(DeletionOutcomeRow).where(
            DeletionOutcomeRow.request_id == row.id, DeletionOutcomeRow.status == OutcomeStatus.FAILED)):
        o.status, o.job_id, o.attempts, o.retry_at, o.updated_at = OutcomeStatus.PENDING, None, 0, None, now
        models.append(o.model)
    row.status, row.failure_reason, row.completed_at = RequestStatus.QUEUED, None, None
    for m in sorted(models):
        enqueue_advance(session, m)
    append_many(session, [Event("request.retried", caller.key_id, owner_id=row.owner_id, request_id=row.id,
                                data={"models": sorted(models)})])
    return row


def published_methods(*, session: Session, outcomes: list[DeletionOutcomeRow]) -> dict[tuple[str, int], str]:
    """(model, version) -> the method that produced that published version."""
    done = {(o.model, o.version) for o in outcomes if o.version is not None}
    if not done:
        return {}
    rows = session.execute(select(ModelVersionRow.model, ModelVersionRow.version, ModelVersionRow.method).where(
        tuple_(ModelVersionRow.model, ModelVersionRow.version).in_(list(done)))).all()
    return {(m, v): method for m, v, method in rows}
