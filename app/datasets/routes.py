"""Dataset routes: import (admin; a public set by name, or an .npz upload), list, read, owners."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.datasets import service
from app.datasets.schemas import NAME, DatasetImport, DatasetOut, OwnerCount, OwnerPage
from app.deps import AdminDep, CallerDep, EngineDep, SessionDep
from app.errors import ApiError

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DatasetImport.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string", "pattern": NAME},
                        "file": {"type": "string", "format": "binary",
                                 "description": ".npz with x, y, owner_id (optional x_test, y_test)"},
                    },
                }
            },
        },
    }
}


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=_IMPORT_BODY)
async def import_dataset(request: Request, session: SessionDep, engine: EngineDep, caller: AdminDep) -> DatasetOut:
    """Import ``fashion-mnist`` or ``digits`` (JSON body), or upload an ``.npz`` (multipart)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        name, upload = form.get("name"), form.get("file")
        if not isinstance(name, str) or not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "multipart upload needs a 'name' field and a 'file' part")
        try:
            DatasetImport(name=name, source="digits")  # validates the name
        except ValidationError:
            raise ApiError(422, "invalid_request", f"invalid dataset name {name!r}") from None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.npz"
            path.write_bytes(await upload.read())
            row = await run_in_threadpool(
                service.import_dataset, session=session, engine=engine, actor=caller.key_id,
                name=name, source="npz", path=path,
            )
    else:
        try:
            body = DatasetImport.model_validate_json(await request.body())
        except ValidationError as exc:  # answered like any other invalid body (errors.py)
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        row = await run_in_threadpool(
            service.import_dataset, session=session, engine=engine, actor=caller.key_id,
            name=body.name, source=body.source, seed=body.seed, owners=body.owners, zipf_a=body.zipf_a,
        )
    return DatasetOut.model_validate(row)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, engine: EngineDep, _: CallerDep) -> list[DatasetOut]:
    return [service.describe(engine=engine, row=r) for r in service.list_all(session=session)]


@router.get("/{name}", response_model=DatasetOut)
def get_dataset(name: str, session: SessionDep, engine: EngineDep, _: CallerDep) -> DatasetOut:
    row = service.get(session=session, name=name)
    return service.describe(engine=engine, row=row)


@router.get("/{name}/owners", response_model=OwnerPage)
def dataset_owners(
    name: str, session: SessionDep, engine: EngineDep, _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: str | None = None,
) -> OwnerPage:
    """Owner ids with their remaining sample counts, in id order; pass ``next_cursor`` as ``after``."""
    service.get(session=session, name=name)
    page, cursor = service.owners(engine=engine, name=name, limit=limit, after=after)
    return OwnerPage(owners=[OwnerCount(owner_id=o, sample_count=c) for o, c in page], next_cursor=cursor)
