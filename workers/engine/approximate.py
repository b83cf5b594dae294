"""Approximate unlearning inside the engine: keeping a job's forget rows before erasure,
and running a method on one constituent of a plan."""
from __future__ import annotations

import numpy as np
import torch

from workers.engine import checkpoints, sisa, unlearning
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, ModelError


def keep_forget_rows(engine, ds, owner_ids: list[str], key: str) -> None:
    """Copy the owners' raw rows to the engine's scratch under ``key`` (before erasure)."""
    ids = [ds.owner_sample_ids(o) for o in owner_ids if ds.knows_owner(o)]
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    arrays = ds.load_arrays()
    rows = np.flatnonzero(np.isin(arrays.sample_ids, ids))
    if len(rows):
        engine.scratch.keep(key, arrays.sample_ids[rows], arrays.x[rows], arrays.y[rows])


def unlearn_constituent(engine, plan: dict, entry: dict) -> str:
    """Run the plan's approximate method on one constituent; return the new weights' digest."""
    spec, shard = plan["spec"], entry["shard"]
    ds = engine.dataset(spec["dataset"])
    data = engine.device_data(ds)
    kept = np.concatenate(engine.slice_blobs(entry["slices"]))
    forget_ids = engine.get_ids(entry["forget_ids"])
    ids, x, y = engine.scratch.load(plan.get("scratch"))
    rows = np.isin(ids, forget_ids)
    if rows.sum() != len(forget_ids):
        raise ModelError(f"shard {shard}: the forget set is no longer available; unlearn exactly instead")
    forget = _split(engine, ds, x[rows], y[rows])
    try:
        retain = unlearning.Split(data.x[data.rows(kept)], data.y[data.rows(kept)])
    except KeyError:
        raise DatasetError(f"dataset {spec['dataset']!r} changed while shard {shard} was planned") from None
    test = engine.test_tensors(ds)
    heldout = unlearning.Split(*test) if test is not None else None
    model = sisa.load_constituent(engine.store.get_blob(entry["parent_weights"]), engine.device)
    method = plan["method"]
    engine.progress(f"unlearning {len(forget_ids)} samples from shard {shard} with {method['name']}")
    result = unlearning.run(method["name"], model, forget, retain, heldout=heldout, overrides=method["config"])
    info = {
        "architecture": spec["architecture"],
        "input_shape": spec["input_shape"],
        "num_classes": spec["num_classes"],
        "shard": shard,
        "samples_seen": int(len(kept)),
        "manifest_digest": ids_digest(kept),
        "unlearned_from": entry["parent_weights"],
        "forgot_sample_ids_digest": ids_digest(forget_ids),
        "method": method,
    }
    blob = checkpoints.dumps(result.model, torch.optim.SGD(result.model.parameters(), lr=0.0), info)
    return engine.store.put_blob(blob)


def _split(engine, ds, x: np.ndarray, y: np.ndarray) -> unlearning.Split:
    scale = np.float32(ds.info().x_scale)
    return unlearning.Split(torch.as_tensor(x.astype(np.float32) * scale).to(engine.device),
                            torch.as_tensor(y.astype(np.int64)).to(engine.device))
