"""Deletion requests: accepted in one transaction with their audit event and outbox rows."""
from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import append
from app.deletions.schemas import DeletionCreate
from app.deps import Caller
from app.errors import ApiError, not_found
from app.outbox import enqueue_advance
from app.tables import DeletionOutcomeRow, DeletionRequestRow, ModelRow
from workers.engine.engine import Engine


def request_hash(body: DeletionCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


def find_replay(*, session: Session, caller: Caller, key: str, body_hash: str) -> DeletionRequestRow | None:
    """The request an Idempotency-Key already made, or None; the same key with another body is an error."""
    row = session.scalars(select(DeletionRequestRow).where(
        DeletionRequestRow.caller == caller.key_id, DeletionRequestRow.idempotency_key == key)).first()
    if row is not None and row.request_hash != body_hash:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request body")
    return row


def target_models(*, session: Session, engine: Engine, body: DeletionCreate) -> list[str]:
    """The models to clean: the named ones, or every model whose dataset holds or held the owner."""
    if body.models is not None:
        names = list(dict.fromkeys(body.models))
        rows = {m.name: m for m in session.scalars(select(ModelRow).where(ModelRow.name.in_(names)))}
        missing = [n for n in names if n not in rows]
        if missing:
            raise not_found("model_not_found", f"no model {missing[0]!r}")
        unknown = [n for n in names if not engine.dataset(rows[n].dataset).knows_owner(body.owner_id)]
        if unknown:
            raise not_found("owner_not_found", f"model {unknown[0]!r}'s dataset never held owner {body.owner_id!r}")
        return names
    rows = session.scalars(select(ModelRow).where(ModelRow.status != "failed").order_by(ModelRow.name)).all()
    holds: dict[str, bool] = {}
    names = []
    for m in rows:
        if m.dataset not in holds:
            holds[m.dataset] = engine.dataset(m.dataset).knows_owner(body.owner_id)
        if holds[m.dataset]:
            names.append(m.name)
    if not names:
        raise not_found("owner_not_found", f"no model's dataset holds owner {body.owner_id!r}")
    return names


def create(
    *, session: Session, engine: Engine, caller: Caller, body: DeletionCreate, idempotency_key: str | None
) -> tuple[DeletionRequestRow, list[DeletionOutcomeRow], bool]:
    """Accept a deletion request; returns (request, its new outcomes, replayed).

    The request row, one pending outcome per model, the audit event and one outbox row
    per model are added to the session together; the caller commits them as one unit.
    """
    body_hash = request_hash(body)
    if idempotency_key is not None:
        existing = find_replay(session=session, caller=caller, key=idempotency_key, body_hash=body_hash)
        if existing is not None:
            return existing, [], True
    models = target_models(session=session, engine=engine, body=body)
    request = DeletionRequestRow(
        id=str(uuid.uuid4()), owner_id=body.owner_id, caller=caller.key_id, method=body.method,
        reason=body.reason, status="queued", idempotency_key=idempotency_key, request_hash=body_hash,
    )
    session.add(request)
    session.flush()
    outcomes = [DeletionOutcomeRow(request_id=request.id, model=m, status="pending", method=body.method)
                for m in models]
    session.add_all(outcomes)
    for m in models:
        enqueue_advance(session, m)
    # The reason is free text and may hold personal data: the audit log keeps its hash only.
    append(session, "request.accepted", actor=caller.key_id, owner_id=body.owner_id, request_id=request.id,
           data={"models": models, "method": body.method, "idempotency_key_given": idempotency_key is not None,
                 "reason_sha256": hashlib.sha256(body.reason.encode()).hexdigest() if body.reason else None})
    return request, outcomes, False


def commit_or_replay(*, session: Session, caller: Caller, request: DeletionRequestRow, key: str | None):
    """Commit; if a concurrent call with the same Idempotency-Key won, return its request."""
    try:
        session.commit()
        return request, False
    except IntegrityError:
        session.rollback()
        if key is None:
            raise
        existing = find_replay(session=session, caller=caller, key=key, body_hash=request.request_hash)
        if existing is None:
            raise
        return existing, True


def get(*, session: Session, caller: Caller, request_id: str) -> DeletionRequestRow:
    row = session.get(DeletionRequestRow, request_id)
    # Another caller's request is reported as missing, not forbidden: ids reveal nothing.
    if row is None or (not caller.is_admin and row.caller != caller.key_id):
        raise not_found("request_not_found", f"no deletion request {request_id!r}")
    return row


def list_for(*, session: Session, caller: Caller, owner_id: str | None, status: str | None,
             limit: int) -> list[DeletionRequestRow]:
    stmt = select(DeletionRequestRow)
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
