"""Datasets: the engine's ledger holds the samples; the database holds a row per dataset."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import append
from app.datasets.schemas import DatasetOut
from app.errors import ApiError, get_or_404
from app.tables import DatasetRow
from workers.engine.engine import Engine
from workers.engine.ledger import DatasetInfo


def import_dataset(
    *, session: Session, engine: Engine, actor: str, name: str, source: str, seed: int = 0,
    owners: int | None = None, zipf_a: float = 0.75, path: Path | None = None,
) -> DatasetRow:
    """Import into the engine's ledger, then record the dataset and an audit event."""
    if session.get(DatasetRow, name) is not None or engine.datasets.exists(name):
        raise ApiError(409, "dataset_exists", f"dataset {name!r} already exists")
    info = engine.import_dataset(name, source, seed=seed, path=path, owners=owners, zipf_a=zipf_a)
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
