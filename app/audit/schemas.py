"""What the audit API answers: events in chain order, and the chain's verification."""
from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    anchored_seq: int | None = Field(None, description="the seq of the latest signed anchor of the chain's head")
    truncated: bool = Field(False, description="the chain ends before its latest anchor: events were cut off the end")
