"""What the owner-lineage API answers: where an owner's data is or was."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class OwnerDataset(BaseModel):
    dataset: str
    remaining_samples: int
    erasures: list[dict]


class OwnerModel(BaseModel):
    model: str
    latest_version: int | None
    versions_trained_on_owner: list[int]
    latest_excludes_owner: bool


class OwnerRequest(BaseModel):
    id: str
    status: str
    created_at: datetime
    completed_at: datetime | None


class OwnerLineage(BaseModel):
    owner_id: str
    datasets: list[OwnerDataset]
    models: list[OwnerModel]
    deletion_requests: list[OwnerRequest]
