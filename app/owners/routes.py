"""Owner lineage (admin): datasets, model versions and requests of one owner."""
from __future__ import annotations

from fastapi import APIRouter

from app.deps import AdminDep, EngineDep, SessionDep
from app.owners import service
from app.owners.schemas import OwnerLineage

router = APIRouter(prefix="/v1/owners", tags=["owners"])


@router.get("/{owner_id:path}", response_model=OwnerLineage)
def get_owner(owner_id: str, session: SessionDep, engine: EngineDep, _: AdminDep) -> OwnerLineage:
    """Datasets with the owner's remaining sample count (0 after erasure), the model
    versions trained on the owner's data (checked against each stored manifest), and
    the owner's deletion requests."""
    return OwnerLineage(**service.lineage(session=session, engine=engine, owner_id=owner_id))
