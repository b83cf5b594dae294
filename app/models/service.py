"""Models and their versions: training jobs in, immutable versions out."""
from __future__ import annotations

import io
import json
import math
import threading
import uuid
import zipfile
from collections import OrderedDict
from datetime import timedelta

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import append
from app.callers import Caller
from app.errors import ApiError, get_or_404
from app.models.schemas import ModelCreate, ModelImport
from app.outbox import enqueue_advance
from app.statuses import JobKind, JobStatus, ModelStatus
from app.tables import DatasetRow, DeletionRequestRow, JobRow, ModelRow, ModelVersionRow, utcnow
from workers.engine import nets
from workers.engine.engine import Engine
from workers.engine.sisa import Ensemble, Strategy
from workers.engine.training import TrainConfig, scaled


def _check_trajectory(model_in: ModelCreate, strategy: dict, dataset: DatasetRow) -> None:
    """422 ``invalid_model`` when a gd model's trajectory would not fit (see ``gdnet``)."""
    from workers.engine import gdnet
    from workers.engine.errors import ModelError

    info = dataset.info or {}
    if "input_shape" not in info or "num_classes" not in info:
        return  # the training job checks it against the data
    spec = {"architecture": model_in.architecture, "architecture_params": model_in.architecture_params or None,
            "input_shape": info["input_shape"], "num_classes": info["num_classes"], "strategy": strategy,
            "recipe": {"seed": model_in.seed}}
    try:
        gdnet.check(spec)
    except (ModelError, ValueError) as exc:
        raise ApiError(422, "invalid_model", str(exc)) from None


def create(*, session: Session, actor: str, model_in: ModelCreate) -> tuple[ModelRow, JobRow]:
    """Record the model and its training job; the job reaches a worker through the outbox."""
    if session.get(ModelRow, model_in.name) is not None:
        raise ApiError(409, "model_exists", f"model {model_in.name!r} already exists")
    dataset = get_or_404(session, DatasetRow, model_in.dataset, "dataset_not_found", f"no dataset {model_in.dataset!r}")
    check_architecture(model_in.architecture, model_in.architecture_params)
    try:
        strategy = Strategy(**model_in.strategy.model_dump()).to_dict()
    except ValueError as exc:  # combinations the schema's fields cannot check one by one
        raise ApiError(422, "invalid_model", str(exc)) from None
    if strategy["kind"] == "linear" and model_in.architecture == "linear" and model_in.architecture_params:
        raise ApiError(422, "invalid_model", "a linear model's head on raw rows takes no architecture parameters")
    if strategy["kind"] == "linear" and model_in.architecture != "linear" and model_in.training.init is None:
        raise ApiError(422, "invalid_model", f"a linear head over {model_in.architecture!r} features needs that "
                       "network's pretrained weights: upload a backbone (POST /v1/backbones) and name it as "
                       "training.init")
    if strategy["kind"] == "gd":
        _check_trajectory(model_in, strategy, dataset)
    if strategy["shards"] * strategy["slices"] > dataset.n_owners:
        raise ApiError(422, "invalid_model", f"{strategy['shards']} shards x {strategy['slices']} slices need at "
                       f"least that many owners; dataset {dataset.name!r} has {dataset.n_owners}")
    recipe = {**model_in.training.model_dump(), "seed": model_in.seed}
    check_recipe(recipe, dataset)
    model = ModelRow(name=model_in.name, dataset=dataset.name, architecture=model_in.architecture,
                     architecture_params=model_in.architecture_params or None,
                     strategy=strategy, recipe=recipe, status=ModelStatus.QUEUED)
    job = JobRow(id=str(uuid.uuid4()), kind=JobKind.TRAIN, model=model.name, status=JobStatus.QUEUED)
    session.add(model)
    try:
        session.flush()  # the job row refers to the model row
    except IntegrityError:  # another request created it since the check above
        raise ApiError(409, "model_exists", f"model {model_in.name!r} already exists") from None
    session.add(job)
    enqueue_advance(session, model.name)
    append(session, "model.training_queued", actor=actor, model=model.name,
           data={"job_id": job.id, "dataset": dataset.name, "architecture": model.architecture,
                 "strategy": strategy, "recipe": recipe})
    return model, job


def retrain(*, session: Session, actor: str, name: str) -> tuple[ModelRow, JobRow]:
    """Queue a full retrain of every shard on the data the dataset holds now (the exact
    reference); it runs after the model's jobs queued before it."""
    model = get(session=session, name=name)
    if model.status != ModelStatus.READY:
        raise ApiError(409, "model_not_ready", f"model {name!r} is {model.status}: it retrains once it is ready")
    job = JobRow(id=str(uuid.uuid4()), kind=JobKind.RETRAIN, model=model.name, status=JobStatus.QUEUED)
    session.add(job)
    enqueue_advance(session, model.name)
    append(session, "model.retrain_queued", actor=actor, model=model.name, data={"job_id": job.id})
    return model, job


def import_model(*, session: Session, engine: Engine, actor: str, body: ModelImport, weights: bytes) -> ModelRow:
    """Publish weights trained elsewhere as version 1 of a new monolithic model (see
    ``workers.engine.importing``) and record it ready. The dataset's lease is held
    meanwhile, so no erasure runs between reading its rows and recording the model."""
    from app.jobs import outcomes  # the version row and its audit event, as a job records them

    if session.get(ModelRow, body.name) is not None:
        raise ApiError(409, "model_exists", f"model {body.name!r} already exists")
    dataset = get_or_404(session, DatasetRow, body.dataset, "dataset_not_found", f"no dataset {body.dataset!r}")
    check_architecture(body.architecture, body.architecture_params)
    recipe = {**body.training.model_dump(), "seed": body.seed}
    check_recipe(recipe, dataset)
    job = JobRow(id=str(uuid.uuid4()), kind=JobKind.TRAIN, model=body.name, status=JobStatus.RUNNING,
                 started_at=utcnow())
    now = utcnow()
    took = session.execute(update(DatasetRow).where(
        DatasetRow.name == dataset.name, (DatasetRow.busy_job.is_(None)) | (DatasetRow.busy_until < now))
        .values(busy_job=job.id, busy_until=now + timedelta(minutes=10))).rowcount
    if not took:
        raise ApiError(409, "dataset_busy", f"a job is changing dataset {dataset.name!r}; import again shortly",
                       headers={"Retry-After": "30"})
    record = engine.import_model(body.name, dataset=dataset.name, architecture=body.architecture, weights=weights,
                                 architecture_params=body.architecture_params or None, config=TrainConfig(**recipe))
    model = ModelRow(name=body.name, dataset=dataset.name, architecture=body.architecture,
                     architecture_params=body.architecture_params or None, status=ModelStatus.READY,
                     strategy=record["strategy"], recipe=recipe, latest_version=record["version"])
    session.add(model)
    try:
        session.flush()
    except IntegrityError:
        raise ApiError(409, "model_exists", f"model {body.name!r} already exists") from None
    job.status, job.version, job.finished_at = JobStatus.COMPLETED, record["version"], utcnow()
    session.add(job)
    session.flush()
    outcomes.record_version(session, job, record)
    append(session, "model.imported", actor=actor, model=body.name, version=record["version"],
           data={"dataset": dataset.name, "architecture": body.architecture, "record_sha256": record["record_sha256"],
                 "weights_sha256": record["constituents"][0]["weights"], "n_samples": record["n_samples"]})
    session.execute(update(DatasetRow).where(DatasetRow.busy_job == job.id).values(busy_job=None, busy_until=None))
    return model


def check_recipe(recipe: dict, dataset: DatasetRow) -> None:
    """422 ``invalid_model`` (error type ``invalid_recipe``, as the body's own recipe
    checks) for a recipe the dataset's inputs cannot take: augmentation of non-images."""
    shape = (dataset.info or {}).get("input_shape")
    if shape is None:
        return  # the training job checks it against the data
    try:
        TrainConfig(**recipe).check_input_shape(shape)
    except ValueError as exc:
        raise ApiError(422, "invalid_model", str(exc), extra={"errors": [
            {"loc": ["body", "training"], "msg": str(exc), "type": "invalid_recipe"}]}) from None


def check_architecture(name: str, params: dict) -> None:
    """422 ``unknown_architecture`` (listing the installed ones) for an unknown name, and
    ``invalid_model`` for a parameter the architecture does not take."""
    if name not in nets.ARCHITECTURES:
        raise ApiError(422, "unknown_architecture", f"unknown architecture {name!r}; installed: "
                       f"{', '.join(nets.ARCHITECTURES.names())}", extra={"known": list(nets.ARCHITECTURES.names())})
    if nets.SOURCES.get(name) == "torchvision":
        return  # get_model's keyword arguments vary by model; a wrong one fails the training job
    known = nets.parameters(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ApiError(422, "invalid_model", f"architecture {name!r} takes no parameter {unknown[0]!r}; "
                       f"it takes {sorted(known) or 'none'}")


def architectures() -> list[dict]:
    return nets.describe()


def get(*, session: Session, name: str) -> ModelRow:
    return get_or_404(session, ModelRow, name, "model_not_found", f"no model {name!r}")


def list_all(*, session: Session) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).order_by(ModelRow.name)))


def current_job(*, session: Session, name: str) -> JobRow | None:
    return session.scalars(select(JobRow).where(JobRow.model == name).order_by(JobRow.created_at.desc())).first()


def versions(*, session: Session, name: str) -> list[ModelVersionRow]:
    get(session=session, name=name)
    return list(session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.model == name).order_by(ModelVersionRow.version)))


def for_caller(*, session: Session, caller: Caller, record: dict) -> dict:
    """The version record as ``caller`` may see it: owner ids are personal data, so a
    client sees an erased owner's id only for the requests it filed itself; the others
    keep their sample count and digest (``owner_id: null``, ``redacted: true``). The
    record's sha256 covers those ids, so a client that could check guesses against it
    could find them out: where any id is redacted, ``record_sha256`` is null too."""
    owners = record.get("removed", {}).get("owners") or []
    if caller.is_admin or not owners:
        return record
    mine = set(session.scalars(select(DeletionRequestRow.owner_id).where(
        DeletionRequestRow.id.in_(record["removed"].get("requests") or []),
        DeletionRequestRow.caller == caller.key_id)))
    shown = [o if o.get("owner_id") in mine else {**o, "owner_id": None, "redacted": True} for o in owners]
    if all(o.get("owner_id") in mine for o in owners):
        return record
    return {**record, "record_sha256": None, "removed": {**record["removed"], "owners": shown}}


def artifact_zip(*, engine: Engine, record: dict) -> bytes:
    """The version's record and each constituent's final weights (safetensors), as a zip
    with fixed timestamps, so the same version always downloads as the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        def add(name, data):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        add("version.json", json.dumps(record, indent=2, sort_keys=True))
        for c in record["constituents"]:
            add(f"shard{c['shard']:03d}.safetensors", engine.store.get_blob(c["weights"]))
    return buf.getvalue()


class EnsembleCache:
    """Loaded versions for prediction; versions are immutable, so entries never go stale."""

    def __init__(self, size: int = 8):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, engine: Engine, name: str, version: int) -> Ensemble:
        key = (name, version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        ensemble = engine.load(name, version)
        with self._lock:
            self._items[key] = ensemble
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return ensemble


NPY_TYPES = ("application/x-npy", "application/octet-stream")
JSON_BYTES_PER_NUMBER = 32  # "-1.2345678901234567e-123, " with room to spare
NPY_KINDS = "biuf"  # bool, integers and floats: no objects (pickles), strings or records
NPY_MAX_ITEMSIZE = 8  # float64 at most, as the body bound assumes


def predict_body_limit(*, width: int, max_rows: int, binary: bool, max_bytes: int) -> int:
    """The most bytes a predict body of ``max_rows`` inputs of ``width`` numbers can take,
    as an ``.npy`` array (float64 at most) or as JSON, and never more than ``max_bytes``."""
    per_number = 8 if binary else JSON_BYTES_PER_NUMBER
    return min(max_rows * (width * per_number + 16) + 4096, max_bytes)


def parse_inputs(body: bytes, *, binary: bool, width: int, max_rows: int) -> list | np.ndarray:
    """A predict body: JSON ``{"inputs": [...]}``, or an ``.npy`` array (no pickles)."""
    if binary:
        return _parse_npy(body, width=width, max_rows=max_rows)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(422, "invalid_request", "the body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(data, dict) or "inputs" not in data or not isinstance(data["inputs"], list):
        raise ApiError(422, "invalid_request", 'the body must be {"inputs": [[...], ...]}')
    return data["inputs"]


def _parse_npy(body: bytes, *, width: int, max_rows: int) -> np.ndarray:
    """An ``.npy`` body, its header checked before anything is allocated: a numeric dtype,
    at most ``max_rows`` rows of ``width`` numbers, and exactly the bytes it declares."""
    fp = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
        else:  # 3.0 only adds UTF-8 field names, and records are refused anyway
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as exc:
        raise ApiError(422, "invalid_inputs", f"not a readable .npy array: {exc}") from None
    if dtype.kind not in NPY_KINDS or dtype.itemsize > NPY_MAX_ITEMSIZE or dtype.hasobject:
        raise ApiError(422, "invalid_inputs", f"the .npy array must hold plain numbers (float64 at most), not {dtype}")
    if len(shape) < 2 or min(shape) < 0 or math.prod(shape[1:]) != width:
        raise ApiError(422, "invalid_inputs", f"each input must hold {width} numbers; the .npy array is {shape}")
    if shape[0] > max_rows:
        raise ApiError(413, "too_many_inputs", f"at most {max_rows} inputs per call, got {shape[0]}")
    declared, present = math.prod(shape) * dtype.itemsize, len(body) - fp.tell()
    if declared != present:
        raise ApiError(422, "invalid_inputs",
                       f"the .npy header declares {declared} bytes of data; the body has {present}")
    return np.frombuffer(body, dtype=dtype, offset=fp.tell()).reshape(shape, order="F" if fortran_order else "C")


def predict(*, engine: Engine, cache: EnsembleCache, record: dict, inputs: list | np.ndarray,
            max_rows: int) -> np.ndarray:
    """Class probabilities for ``inputs`` (raw units, as in the dataset) from one version."""
    spec_shape = engine.store.model_spec(record["model"])["input_shape"]
    if len(inputs) == 0:
        raise ApiError(422, "invalid_inputs", "inputs is empty")
    if len(inputs) > max_rows:
        raise ApiError(413, "too_many_inputs", f"at most {max_rows} inputs per call, got {len(inputs)}")
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(422, "invalid_inputs", "inputs must be equally shaped arrays of numbers") from None
    width = int(np.prod(spec_shape))
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != width:
        raise ApiError(422, "invalid_inputs", f"each input must hold {width} numbers (shape {spec_shape})")
    if not np.isfinite(x).all():
        raise ApiError(422, "invalid_inputs", "inputs must be finite numbers")
    scale = engine.dataset(record["dataset"]).info().x_scale
    x = scaled(x.reshape(len(x), *spec_shape), scale, engine.device)
    ensemble = cache.get(engine, record["model"], record["version"])
    return ensemble.predict_proba(x).cpu().numpy()
