"""Model routes: train (admin), list, read, versions, artifact download, predict."""
from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.deps import AdminDep, CallerDep, EngineDep, SessionDep, SettingsDep
from app.errors import ApiError, get_or_404
from app.http import multipart_form, read_body
from app.models import service, versions
from app.tables import DatasetRow
from app.models.schemas import (
    AliasIn,
    AliasOut,
    ArchitectureOut,
    BackboneOut,
    ModelImport,
    JobOut,
    ModelAccepted,
    ModelCreate,
    ModelOut,
    PredictIn,
    PredictOut,
    VersionOut,
    VersionSummary,
)

router = APIRouter(prefix="/v1/models", tags=["models"])
architectures_router = APIRouter(prefix="/v1/architectures", tags=["models"])
backbones = APIRouter(prefix="/v1/backbones", tags=["models"])


@architectures_router.get("", response_model=list[ArchitectureOut])
def list_architectures(_: CallerDep) -> list[ArchitectureOut]:
    """Every installed architecture: built in, torchvision's classification models, and
    plugins (the ``lethe.architectures`` entry-point group), with their parameters."""
    return [ArchitectureOut(**a) for a in service.architectures()]


def _model(row, job) -> ModelOut:
    out = ModelOut.model_validate(row)
    out.job = JobOut.model_validate(job) if job is not None else None
    return out


@router.post("", status_code=202, response_model=ModelAccepted)
def create_model(body: ModelCreate, session: SessionDep, engine: EngineDep, caller: AdminDep) -> ModelAccepted:
    """Queue training; poll ``GET /v1/models/{name}`` for status and progress."""
    if body.training.init is not None and not engine.store.has_blob(body.training.init):
        raise ApiError(422, "invalid_model", "training.init names no stored backbone: upload it with "
                       "POST /v1/backbones and use the digest it answers")
    model, job = service.create(session=session, actor=caller.key_id, model_in=body)
    return ModelAccepted(model=model.name, status=model.status, job=JobOut.model_validate(job))


@router.post("/{name}/retrain", status_code=202, response_model=ModelAccepted)
def retrain_model(name: str, session: SessionDep, caller: AdminDep) -> ModelAccepted:
    """Queue a full retrain of every shard on the data the dataset holds now (the exact
    reference), published as a new version; follow it at ``GET /v1/jobs/{id}``. 409
    ``model_not_ready`` while the model is not ready."""
    model, job = service.retrain(session=session, actor=caller.key_id, name=name)
    return ModelAccepted(model=model.name, status=model.status, job=JobOut.model_validate(job))


_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["name", "dataset", "architecture", "weights"],
            "properties": {
                "name": {"type": "string"}, "dataset": {"type": "string"}, "architecture": {"type": "string"},
                "architecture_params": {"type": "string", "description": "JSON object"},
                "training": {"type": "string", "description": "JSON object: the recipe (epochs, batch_size, lr, ...)"},
                "seed": {"type": "integer"},
                "weights": {"type": "string", "format": "binary",
                            "description": "a safetensors state dict, a torch.save state dict (read weights-only), "
                                           "or a TorchScript or torch.export (.pt2) archive of the model"},
            },
        }}},
    }
}


_BACKBONE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["dataset", "architecture", "weights"],
            "properties": {
                "dataset": {"type": "string"}, "architecture": {"type": "string"},
                "architecture_params": {"type": "string", "description": "JSON object"},
                "weights": {"type": "string", "format": "binary",
                            "description": "a safetensors or torch.save state dict, or a TorchScript or "
                                           "torch.export archive: a backbone pretrained elsewhere"},
            },
        }}},
    }
}


@backbones.post("", status_code=201, response_model=BackboneOut, openapi_extra=_BACKBONE_BODY)
async def upload_backbone(request: Request, session: SessionDep, engine: EngineDep, _: AdminDep) -> BackboneOut:
    """Keep a checkpoint pretrained elsewhere (a backbone) for an architecture on a
    dataset: the parameters that fit (same name, same shape) are stored, the rest (a
    head for other classes) listed as skipped. Name the answer's ``digest`` as
    ``training.init`` in ``POST /v1/models`` to start every constituent from it."""
    upload, fields = await multipart_form(request, "weights", json_fields=("architecture_params",))
    params = fields.get("architecture_params") or {}
    if not isinstance(params, dict) or not fields.get("dataset") or not fields.get("architecture"):
        raise ApiError(422, "invalid_request", "the upload needs 'dataset' and 'architecture' fields "
                       "(and architecture_params, if any, as a JSON object)")
    dataset = get_or_404(session, DatasetRow, fields["dataset"], "dataset_not_found", f"no dataset {fields['dataset']!r}")
    service.check_architecture(fields["architecture"], params)
    data = await upload.read()
    kept = await run_in_threadpool(lambda: engine.store_backbone(dataset.name, architecture=fields["architecture"],
                                                                 architecture_params=params or None, data=data))
    return BackboneOut(architecture=fields["architecture"], dataset=dataset.name, **kept)


@router.post("/import", status_code=201, response_model=ModelOut, openapi_extra=_IMPORT_BODY)
async def import_model(request: Request, session: SessionDep, engine: EngineDep, caller: AdminDep) -> ModelOut:
    """Bring a model trained elsewhere: its weights become version 1 (``kind: imported``)
    of a monolithic model on ``dataset``, evaluated and served like any other. Weights
    that do not fit the architecture are 422 ``invalid_weights`` naming the first key."""
    upload, body = await multipart_form(request, "weights", json_fields=("architecture_params", "training"),
                                        model=ModelImport)
    weights = await upload.read()
    model = await run_in_threadpool(lambda: service.import_model(session=session, engine=engine, actor=caller.key_id,
                                                                 body=body, weights=weights))
    return _model(model, None)


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, _: CallerDep) -> list[ModelOut]:
    return [_model(m, service.current_job(session=session, name=m.name)) for m in service.list_all(session=session)]


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str, session: SessionDep, _: CallerDep) -> ModelOut:
    row = service.get(session=session, name=name)
    return _model(row, service.current_job(session=session, name=name))


@router.get("/{name}/versions", response_model=list[VersionSummary])
def list_versions(name: str, session: SessionDep, _: CallerDep) -> list[VersionSummary]:
    return [VersionSummary.model_validate(v) for v in service.versions(session=session, name=name)]


@router.get("/{name}/versions/{number}", response_model=VersionOut)
def get_version(name: str, number: str, session: SessionDep, engine: EngineDep, caller: CallerDep) -> VersionOut:
    """A version's evidence: parent, digests, requests it covers, metrics, timings, and
    whether it was revoked. ``number`` is a version, ``latest`` or an alias. A client
    sees the ids of removed owners only for the requests it filed."""
    service.get(session=session, name=name)
    v = versions.resolve(session=session, engine=engine, name=name, reference=number)
    return VersionOut.from_record(service.for_caller(session=session, caller=caller, record=v.record), v.row)


@router.get("/{name}/versions/{number}/artifact", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def download_artifact(name: str, number: str, session: SessionDep, engine: EngineDep, caller: CallerDep) -> Response:
    """A zip of ``version.json`` and each constituent's weights as safetensors (410 once
    revoked); a client's ``version.json`` names only the removed owners of its own requests."""
    service.get(session=session, name=name)
    r = versions.servable(versions.resolve(session=session, engine=engine, name=name, reference=number))
    shown = service.for_caller(session=session, caller=caller, record=r)
    sha = {"X-Lethe-Record-Sha256": shown["record_sha256"]} if shown["record_sha256"] else {}
    return Response(
        service.artifact_zip(engine=engine, record=shown), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{r["version"]}.zip"', **sha},
    )


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictIn.model_json_schema()},
            "application/x-npy": {"schema": {"type": "string", "format": "binary",
                                             "description": "an .npy array of inputs (no pickles)"}},
        },
    }
}


@router.post("/{name}/versions/{number}/predict", response_model=PredictOut, openapi_extra=_PREDICT_BODY)
async def predict(name: str, number: str, request: Request, session: SessionDep, engine: EngineDep,
                  settings: SettingsDep, _: CallerDep) -> PredictOut:
    """Class probabilities for a batch of inputs from any live version, so anyone can check it.
    The body is JSON ``{"inputs": [...]}`` or an ``.npy`` array (``Content-Type:
    application/x-npy``), bounded by what ``LETHE_MAX_PREDICT_ROWS`` inputs can take and
    by ``LETHE_MAX_PREDICT_BYTES`` (413 as soon as it passes); an ``.npy`` header is checked
    before anything is allocated; parsing and inference run off the event loop."""

    def servable() -> dict:
        service.get(session=session, name=name)
        return versions.servable(versions.resolve(session=session, engine=engine, name=name, reference=number))

    r = await run_in_threadpool(servable)
    width = int(np.prod(engine.store.model_spec(name)["input_shape"]))
    binary = request.headers.get("content-type", "").split(";")[0].strip() in service.NPY_TYPES
    limit = service.predict_body_limit(width=width, max_rows=settings.max_predict_rows, binary=binary,
                                       max_bytes=settings.max_predict_bytes)
    body = await read_body(request, limit)
    inputs = await run_in_threadpool(lambda: service.parse_inputs(body, binary=binary, width=width,
                                                                  max_rows=settings.max_predict_rows))
    probs = await run_in_threadpool(lambda: service.predict(engine=engine, cache=request.app.state.ensembles,
                                                            record=r, inputs=inputs, max_rows=settings.max_predict_rows))
    return PredictOut(model=name, version=r["version"], probabilities=probs.astype(float).round(6).tolist(),
                      predicted=probs.argmax(1).tolist())


@router.get("/{name}/aliases", response_model=list[AliasOut])
def list_aliases(name: str, session: SessionDep, _: CallerDep) -> list[AliasOut]:
    service.get(session=session, name=name)
    return [AliasOut.model_validate(a) for a in versions.aliases(session=session, name=name)]


@router.put("/{name}/aliases/{alias}", response_model=AliasOut)
def set_alias(name: str, alias: str, body: AliasIn, session: SessionDep, engine: EngineDep,
              caller: AdminDep) -> AliasOut:
    """Point an alias (``production``, ...) at a live version; every version route takes
    it in place of a number. When that version is revoked, the alias moves to the one
    that replaced it."""
    service.get(session=session, name=name)
    return AliasOut.model_validate(versions.set_alias(session=session, engine=engine, actor=caller.key_id,
                                                      name=name, alias=alias, version=body.version))


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, session: SessionDep, caller: AdminDep) -> Response:
    service.get(session=session, name=name)
    versions.delete_alias(session=session, actor=caller.key_id, name=name, alias=alias)
    return Response(status_code=204)
