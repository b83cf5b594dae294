"""Where an owner's data is or was: datasets, model versions trained on it, requests."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import not_found
from app.tables import DatasetRow, DeletionRequestRow, ModelRow, ModelVersionRow
from workers.engine.engine import Engine


def lineage(*, session: Session, engine: Engine, owner_id: str) -> dict:
    datasets, owner_ids_by_dataset = [], {}
    for ds_row in session.scalars(select(DatasetRow).order_by(DatasetRow.name)):
        ds = engine.dataset(ds_row.name)
        if not ds.knows_owner(owner_id):
            continue
        remaining = ds.owner_sample_ids(owner_id)
        erasures = ds.erasures(owner_id)
        erased = [i for e in erasures for i in e.sample_ids]
        owner_ids_by_dataset[ds_row.name] = np.concatenate([remaining, np.asarray(erased, dtype=np.int64)])
        datasets.append({
            "dataset": ds_row.name,
            "remaining_samples": int(len(remaining)),
            "erasures": [{"sample_count": len(e.sample_ids), "sample_ids_digest": e.digest, "erased_at": e.erased_at}
                         for e in erasures],
        })
    models = []
    for m in session.scalars(select(ModelRow).where(ModelRow.dataset.in_(owner_ids_by_dataset)).order_by(ModelRow.name)):
        ids = owner_ids_by_dataset[m.dataset]
        numbers = session.scalars(select(ModelVersionRow.version).where(ModelVersionRow.model == m.name)
                                  .order_by(ModelVersionRow.version)).all()
        # Read each version's manifest back from the store: the proof, not a flag.
        trained_on = [n for n in numbers
                      if np.isin(ids, np.concatenate([np.concatenate(s) for s in engine.slice_ids(engine.version(m.name, n))])).any()]
        models.append({
            "model": m.name,
            "latest_version": m.latest_version,
            "versions_trained_on_owner": trained_on,
            "latest_excludes_owner": m.latest_version is not None and m.latest_version not in trained_on,
        })
    requests = session.scalars(select(DeletionRequestRow).where(DeletionRequestRow.owner_id == owner_id)
                               .order_by(DeletionRequestRow.created_at)).all()
    if not datasets and not requests:
        raise not_found("owner_not_found", f"no dataset holds or held owner {owner_id!r}")
    return {
        "owner_id": owner_id,
        "datasets": datasets,
        "models": models,
        "deletion_requests": [{"id": r.id, "status": r.status, "created_at": r.created_at,
                               "completed_at": r.completed_at} for r in requests],
    }
