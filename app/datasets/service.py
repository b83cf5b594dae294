"""Datasets: the engine's ledger holds the samples; the database holds a row per dataset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import append
from app.datasets.schemas import FILE_SOURCES, DatasetOut
from app.errors import ApiError, get_or_404
from app.tables import DatasetRow
from workers.engine.engine import Engine
from workers.engine.ledger import DatasetInfo


def server_path(settings, body) -> Path | None:
    """The server-side file a JSON import names, inside ``LETHE_IMPORT_DIR``: 422 for a
    file source without one (or a public set with one), 403 ``path_not_allowed`` for
    one outside that folder (or when none is configured)."""
    needs_file = body.source in FILE_SOURCES
    if body.path is None:
        if needs_file:
            raise ApiError(422, "invalid_request", f"source {body.source!r} reads a file: upload it (multipart) "
                           "or name a path under LETHE_IMPORT_DIR")
        return None
    if not needs_file:
        raise ApiError(422, "invalid_request", f"source {body.source!r} takes no path")
    root = settings.import_dir
    if root is None:
        raise ApiError(403, "path_not_allowed", "imports by path are off: LETHE_IMPORT_DIR is not set")
    root = root.resolve()
    path = (root / body.path).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ApiError(403, "path_not_allowed", "the path must name a file or folder inside LETHE_IMPORT_DIR")
    return path


def import_dataset(
    *, session: Session, engine: Engine, actor: str, name: str, source: str, seed: int = 0,
    owners: int | None = None, zipf_a: float = 0.75, label_alpha: float | None = None, path: Path | None = None,
    options: dict | None = None,
) -> DatasetRow:
    """Import into the engine's ledger, then record the dataset and an audit event.

    The ledger is written before the database row; if recording the row fails (the
    database blinked), the ledger's dataset is left without one. The same import tried
    again (same source, file, options and seed: the same fingerprint) adopts it instead of
    answering that it exists; a different one is still 409."""
    if session.get(DatasetRow, name) is not None:
        raise ApiError(409, "dataset_exists", f"dataset {name!r} already exists")
    fingerprint = _fingerprint(source, path, options=options, seed=seed, owners=owners, zipf_a=zipf_a,
                               **({"label_alpha": label_alpha} if label_alpha is not None else {}))
    if engine.datasets.exists(name):
        info = engine.dataset(name).info()
        if info.source.get("fingerprint") != fingerprint:
            raise ApiError(409, "dataset_exists", f"dataset {name!r} already exists")
    else:
        info = engine.import_dataset(name, source, seed=seed, path=path, owners=owners, zipf_a=zipf_a,
                                     label_alpha=label_alpha,
                                     options=options, fingerprint=fingerprint)
    row = DatasetRow(name=name, source=source, n_samples=info.n_samples, n_owners=info.n_owners, info=_info(info))
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # another request recorded it since the check above
        raise ApiError(409, "dataset_exists", f"dataset {name!r} already exists") from None
    append(session, "dataset.imported", actor=actor,
           data={"dataset": name, "source": source, "n_samples": info.n_samples, "n_owners": info.n_owners,
                 "n_test": info.n_test, "seed": seed})
    return row


def _fingerprint(source: str, path: Path | None, **settings) -> str:
    """What makes two imports the same import: the source, its settings and the file's bytes."""
    digest = hashlib.sha256(json.dumps({"source": source, **settings}, sort_keys=True, default=str).encode())
    if path is not None and Path(path).is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    elif path is not None:
        digest.update(str(Path(path).resolve()).encode())  # a folder: by where it is
    return digest.hexdigest()


def _info(info: DatasetInfo) -> dict:
    return {"num_classes": info.num_classes, "input_shape": info.input_shape, "x_scale": info.x_scale,
            "n_test": info.n_test, "source": info.source}


def get(*, session: Session, name: str) -> DatasetRow:
    return get_or_404(session, DatasetRow, name, "dataset_not_found", f"no dataset {name!r}")


def list_all(*, session: Session) -> list[DatasetRow]:
    return list(session.scalars(select(DatasetRow).order_by(DatasetRow.name)))


def describe(*, engine: Engine, row: DatasetRow) -> DatasetOut:
    """The dataset as the API shows it. Sample and owner counts change with erasures, so
    they are read from the ledger (the row keeps the counts at import)."""
    out = DatasetOut.model_validate(row)
    info = engine.dataset(row.name).info()
    out.n_samples, out.n_owners = info.n_samples, info.n_owners
    return out


def owners(*, engine: Engine, name: str, limit: int, after: str | None) -> tuple[list[tuple[str, int]], str | None]:
    page = engine.dataset(name).owners(limit=limit, after=after)
    return page, (page[-1][0] if len(page) == limit else None)
