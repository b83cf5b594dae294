"""Dataset routes: import (admin; a public set by name, or an .npz upload), list, read, owners."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.datasets import service
from app.datasets.schemas import FILE_SOURCES, NAME, DatasetImport, DatasetOut, OwnerCount, OwnerPage
from app.deps import AdminDep, CallerDep, EngineDep, SessionDep
from app.errors import ApiError
from app.http import multipart_form

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
                        "source": {"type": "string", "enum": list(FILE_SOURCES), "default": "npz"},
                        "options": {"type": "string", "description": "JSON object (see DatasetImport.options)"},
                        "file": {"type": "string", "format": "binary",
                                 "description": "npz: x, y, owner_id (optional x_test, y_test); table: a CSV or "
                                                "Parquet file; image-folder: a zip or tar of <class>/<file> "
                                                "with owners.csv"},
                    },
                }
            },
        },
    }
}


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=_IMPORT_BODY)
async def import_dataset(request: Request, session: SessionDep, engine: EngineDep, caller: AdminDep) -> DatasetOut:
    """Import ``fashion-mnist`` or ``digits`` (JSON body); upload a file (multipart: an
    ``.npz``, a table or an image-folder archive); or import a file already on the server
    (JSON ``path`` under ``LETHE_IMPORT_DIR``)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        upload, fields = await multipart_form(request, "file", json_fields=("options",))
        try:
            body = DatasetImport.model_validate({"source": "npz", **fields})
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        if body.source not in FILE_SOURCES or body.path is not None:
            raise ApiError(422, "invalid_request", f"an upload is imported with a file source "
                           f"({', '.join(FILE_SOURCES)}), without a path")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ("upload" + _suffix(upload.filename))
            with open(path, "wb") as fh:  # from the spooled upload, not through memory
                await run_in_threadpool(shutil.copyfileobj, upload.file, fh, 1 << 20)
            row = await run_in_threadpool(
                service.import_dataset, session=session, engine=engine, actor=caller.key_id,
                name=body.name, source=body.source, path=path, options=body.options,
            )
    else:
        try:
            body = DatasetImport.model_validate_json(await request.body())
        except ValidationError as exc:  # answered like any other invalid body (errors.py)
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        path = service.server_path(request.app.state.settings, body)
        row = await run_in_threadpool(
            service.import_dataset, session=session, engine=engine, actor=caller.key_id,
            name=body.name, source=body.source, seed=body.seed, owners=body.owners, zipf_a=body.zipf_a,
            label_alpha=body.label_alpha,
            path=path, options=body.options,
        )
    return DatasetOut.model_validate(row)


def _suffix(filename: str | None) -> str:
    """The upload's file type suffix (``.tar.gz``, ``.csv``, ...), letters and digits only."""
    suffixes = Path(filename or "").suffixes[-2:]
    return "".join(s for s in suffixes if s[1:].isalnum() and len(s) <= 9).lower()


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
