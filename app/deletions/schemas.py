"""Deletion requests and answers; the method names come from the engine's registry."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.statuses import OutcomeStatus, RequestStatus
from app.text import Input
from workers.engine.unlearning import METHODS

DELETION_METHODS = ("exact", "auto", *METHODS)


class DeletionCreate(Input):
    owner_id: str = Field(min_length=1, max_length=128)
    models: list[str] | None = Field(None, min_length=1, max_length=100,
                                     description="default: every model whose dataset holds or held the owner")
    method: Literal[DELETION_METHODS] = Field(
        "exact", description="exact (SISA retraining), auto (the configured approximate method, verified, "
        "falling back to exact), or an approximate method's name (verified the same way)")
    reason: str | None = Field(None, max_length=1000)


class Outcome(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model: str
    status: OutcomeStatus
    method: str
    version: int | None
    metrics: dict | None
    seconds: float | None
    error: str | None
    published_method: str | None = Field(None, description="the method that produced the published version "
                                         "(``method`` is the one asked for; exact when the gate fell back)")
    attempts: int = Field(0, description="failed tries so far; retried up to LETHE_MAX_ATTEMPTS")
    retry_at: datetime | None = Field(None, description="when a pending retry runs")
    job_id: str | None = Field(None, description="the job serving it: live progress at GET /v1/jobs/{job_id}")


class DeletionOut(BaseModel):
    # models and outcomes are filled in after validating the request row; they are
    # always present in an answer, so the response schema lists them as required.
    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)

    id: str
    owner_id: str
    status: RequestStatus
    method: str
    reason: str | None
    failure_reason: str | None
    models: list[str] = []
    outcomes: list[Outcome] = []
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    due_at: datetime | None = Field(None, description="accepted + LETHE_DEADLINE_DAYS (GDPR Art. 12(3))")
    overdue: bool = Field(False, description="past due_at and not completed")
