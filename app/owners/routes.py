from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.deps import AdminDep, EngineDep, SessionDep
from app.owners import service

router = APIRouter(prefix="/v1/owners", tags=["owners"])


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


@router.get("/{owner_id}", response_model=OwnerLineage)
def get_owner(owner_id: str, session: SessionDep, engine: EngineDep, _: AdminDep) -> OwnerLineage:
    """Datasets with the owner's remaining sample count (0 after erasure), the model
    versions trained on the owner's data (checked against each stored manifest), and
    the owner's deletion requests."""
    return OwnerLineage(**service.lineage(session=session, engine=engine, owner_id=owner_id))
