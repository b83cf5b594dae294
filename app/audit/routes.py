"""Audit routes (admin): query the hash-chained events, verify the chain."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.audit import anchors, service
from app.audit.schemas import AuditEvent, AuditPage, ChainOut
from app.deps import AdminDep, EngineDep, SessionDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def list_events(
    session: SessionDep, _: AdminDep, owner_id: str | None = None, request_id: str | None = None,
    model: str | None = None, since: datetime | None = None, until: datetime | None = None,
    cursor: Annotated[int, Query(ge=0, le=2**31 - 1, description="next_cursor of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Audit events in chain order, filtered; pass ``next_cursor`` back as ``cursor``."""
    flt = service.AuditFilter(owner_id=owner_id, request_id=request_id, model=model, since=since, until=until)
    rows = service.query(session, flt, after=cursor, limit=limit)
    events = [AuditEvent.model_validate(r) for r in rows]
    return AuditPage(events=events, next_cursor=rows[-1].seq if len(rows) == limit else None)


@router.get("/verify", response_model=ChainOut)
def verify(request: Request, session: SessionDep, engine: EngineDep, _: AdminDep) -> ChainOut:
    """Recompute every link of the chain and hold it against its latest signed anchor;
    ``ok`` is false at the first broken event, or when the chain was cut short
    (``truncated``) or rewritten since it was anchored."""
    return ChainOut(**anchors.verify(session, engine.store, request.app.state.signing_key).__dict__)
