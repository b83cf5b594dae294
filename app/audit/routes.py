from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, field_validator

from app.audit import service
from app.deps import AdminDep, SessionDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: str
    actor: str
    kind: str
    owner_id: str | None
    request_id: str | None
    model: str | None
    version: int | None
    data: dict
    prev_hash: str
    hash: str

    @field_validator("data", mode="before")
    @classmethod
    def _parse(cls, value):
        return json.loads(value) if isinstance(value, str) else value


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_cursor: int | None


class ChainOut(BaseModel):
    ok: bool
    events: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None


@router.get("", response_model=AuditPage)
def list_events(
    session: SessionDep, _: AdminDep, owner_id: str | None = None, request_id: str | None = None,
    model: str | None = None, since: datetime | None = None, until: datetime | None = None,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1, description="next_cursor of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Audit events in chain order, filtered; pass ``next_cursor`` back as ``cursor``."""
    flt = service.AuditFilter(owner_id=owner_id, request_id=request_id, model=model, since=since, until=until)
    rows = service.query(session, flt, after=cursor, limit=limit)
    events = [AuditEvent.model_validate(r) for r in rows]
    return AuditPage(events=events, next_cursor=rows[-1].seq if len(rows) == limit else None)


@router.get("/verify", response_model=ChainOut)
def verify(session: SessionDep, _: AdminDep) -> ChainOut:
    """Recompute every link of the chain; ``ok`` is false at the first broken event."""
    return ChainOut(**service.verify_chain(session).__dict__)
