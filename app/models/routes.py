from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.deps import AdminDep, CallerDep, EngineDep, SessionDep, SettingsDep
from app.models import service
from app.models.schemas import (
    Constituent,
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


def _job(job) -> JobOut | None:
    if job is None:
        return None
    return JobOut(id=job.id, kind=job.kind, status=job.status, progress=job.progress, error=job.error,
                  created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)


def _model(row, job) -> ModelOut:
    return ModelOut(name=row.name, dataset=row.dataset, architecture=row.architecture, strategy=row.strategy,
                    training=row.recipe, status=row.status, latest_version=row.latest_version, error=row.error,
                    job=_job(job), created_at=row.created_at)


@router.post("", status_code=202, response_model=ModelAccepted)
def create_model(body: ModelCreate, request: Request, session: SessionDep, caller: AdminDep) -> ModelAccepted:
    """Queue training; poll ``GET /v1/models/{name}`` for status and progress."""
    model, job = service.create(session=session, actor=caller.key_id, model_in=body)
    session.commit()
    request.app.state.poke_relay()
    return ModelAccepted(model=model.name, status=model.status, job=_job(job))


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, _: CallerDep) -> list[ModelOut]:
    return [_model(m, service.current_job(session=session, name=m.name)) for m in service.list_all(session=session)]


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str, session: SessionDep, _: CallerDep) -> ModelOut:
    row = service.get(session=session, name=name)
    return _model(row, service.current_job(session=session, name=name))


@router.get("/{name}/versions", response_model=list[VersionSummary])
def list_versions(name: str, session: SessionDep, _: CallerDep) -> list[VersionSummary]:
    return [
        VersionSummary(model=v.model, version=v.version, parent=v.parent, kind=v.kind, method=v.method,
                       manifest_digest=v.manifest_digest, n_samples=v.n_samples, requests=v.requests,
                       test_accuracy=v.metrics.get("test_accuracy"), created_at=v.created_at)
        for v in service.versions(session=session, name=name)
    ]


@router.get("/{name}/versions/{number}", response_model=VersionOut)
def get_version(name: str, number: str, session: SessionDep, engine: EngineDep, _: CallerDep) -> VersionOut:
    """A version's evidence: parent, digests, requests it covers, metrics, timings."""
    r = service.record(session=session, engine=engine, name=name, number=number)
    return VersionOut(
        model=r["model"], version=r["version"], parent=r["parent"], kind=r["kind"],
        method=r.get("method", {}).get("name", "exact"), method_config=r.get("method", {}).get("config"),
        exact=r.get("exact", True), dataset=r["dataset"], architecture=r["architecture"],
        strategy=r["strategy"], recipe=r["recipe"], device=r["device"], n_samples=r["n_samples"],
        manifest_digest=r["manifest_digest"], record_sha256=r["record_sha256"], requests=r["removed"]["requests"],
        removed=r["removed"], metrics=r["metrics"], artifacts=r["artifacts"], created_at=r["created_at"],
        constituents=[
            Constituent(shard=c["shard"], status=c["status"], retrained_from_slice=c["retrained_from_slice"],
                        n_samples=c["n_samples"], manifest_digest=c["manifest_digest"], weights_sha256=c["weights"],
                        tainted_from_slice=c.get("tainted_from_slice"))
            for c in r["constituents"]
        ],
    )


@router.get("/{name}/versions/{number}/artifact", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def download_artifact(name: str, number: str, session: SessionDep, engine: EngineDep, _: CallerDep) -> Response:
    """A zip of ``version.json`` and each constituent's weights as safetensors."""
    r = service.record(session=session, engine=engine, name=name, number=number)
    return Response(
        service.artifact_zip(engine=engine, record=r), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{r["version"]}.zip"',
                 "X-Lethe-Record-Sha256": r["record_sha256"]},
    )


@router.post("/{name}/versions/{number}/predict", response_model=PredictOut)
def predict(name: str, number: str, body: PredictIn, request: Request, session: SessionDep, engine: EngineDep,
            settings: SettingsDep, _: CallerDep) -> PredictOut:
    """Class probabilities for a batch of inputs from any version, so anyone can check it."""
    r = service.record(session=session, engine=engine, name=name, number=number)
    probs = service.predict(engine=engine, cache=request.app.state.ensembles, record=r, inputs=body.inputs,
                            max_rows=settings.max_predict_rows)
    return PredictOut(model=name, version=r["version"], probabilities=probs.astype(float).round(6).tolist(),
                      predicted=probs.argmax(1).tolist())
