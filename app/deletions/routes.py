"""Deletion-request routes: submit (through the intake's group commit), list, read."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from app import logs
from app.deletions import service
from app.deletions.schemas import DeletionCreate, DeletionOut, Outcome
from app.deps import AdminDep, CallerDep, SessionDep
from app.statuses import RequestStatus

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion requests"])


def _out(session, row, outcomes=None) -> DeletionOut:
    outcomes = outcomes if outcomes is not None else service.outcomes(session=session, request_id=row.id)
    out = DeletionOut.model_validate(row)
    out.outcomes = [Outcome.model_validate(o) for o in outcomes]
    if session is not None:
        produced = service.published_methods(session=session, outcomes=outcomes)
        for o in out.outcomes:
            o.published_method = produced.get((o.model, o.version))
    out.models = [o.model for o in outcomes]
    out.overdue = service.is_overdue(row)
    return out


@router.post("", status_code=202, response_model=DeletionOut)
async def create_deletion(
    body: DeletionCreate, request: Request, response: Response, caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> DeletionOut:
    """Ask for an owner to be forgotten by every model that learned from them (or the named ones).

    Send an ``Idempotency-Key`` header to make retries safe: the same key returns the
    same request; the same key with a different body is a 422 ``idempotency_key_reused``.
    """
    sub = service.Submission(caller, body, idempotency_key, trace_id=logs.request_id())
    accepted = await request.app.state.intake.submit(sub)
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _out(None, accepted.request, accepted.outcomes)


@router.get("", response_model=list[DeletionOut])
def list_deletions(
    session: SessionDep, caller: CallerDep, owner_id: str | None = None,
    status: RequestStatus | None = None,
    overdue: Annotated[bool, Query(description="only those past due_at and not completed")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeletionOut]:
    """The caller's own requests, newest first (an admin sees everyone's)."""
    rows = service.list_for(session=session, caller=caller, owner_id=owner_id, status=status, limit=limit,
                            overdue=overdue)
    return [_out(session, r) for r in rows]


@router.post("/{request_id}/retry", response_model=DeletionOut)
def retry_deletion(request_id: str, session: SessionDep, caller: AdminDep) -> DeletionOut:
    """Queue a failed request's failed outcomes again (admin); 409 ``request_not_failed`` otherwise."""
    return _out(session, service.retry(session=session, caller=caller, request_id=request_id))


@router.get("/{request_id}", response_model=DeletionOut)
def get_deletion(request_id: str, session: SessionDep, caller: CallerDep) -> DeletionOut:
    """Status (queued -> running -> completed | failed) and, per model, the version published."""
    return _out(session, service.get(session=session, caller=caller, request_id=request_id))
