"""Running one shard of a plan: SISA (re)training slice by slice from a stored
checkpoint, or an approximate method on the constituent. Deterministic, so a shard run
twice (a redelivered task) stores the same bytes."""
from __future__ import annotations

import numpy as np
import torch

from models_store import ModelStore
from workers.engine import approximate, gdnet, linear, sisa
from workers.engine.datasets import device_data
from workers.engine.errors import DatasetError
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan, ShardStatus
from workers.engine.training import TrainConfig
from workers.engine.vault import Vault


def _init_state(store: ModelStore, spec: dict) -> dict | None:
    """The pretrained backbone the model starts from, if it names one."""
    digest = spec["recipe"].get("init")
    if digest is None:
        return None
    from safetensors.torch import load as st_load

    return st_load(store.get_blob(digest))


def run_shard(plan: Plan, shard: int, *, store: ModelStore, ds: Dataset, device: torch.device, vault: Vault,
              progress=lambda msg, state=None: None) -> list[str]:
    """Train (or unlearn) one planned shard; return its new checkpoints' digests."""
    entry = plan.shards[shard]
    if entry.status == ShardStatus.REUSED:
        return []
    spec = plan.spec
    kind = spec["strategy"]["kind"]
    if entry.status == ShardStatus.APPROXIMATE:
        if kind in ("linear", "gd") and plan.method.name in ("certified", "deltagrad"):
            forget = approximate.forget_inputs(plan, entry, store=store, ds=ds, vault=vault, device=device)
            unlearn = linear.unlearn_head if kind == "linear" else gdnet.unlearn_net
            return [unlearn(plan, entry, forget, store=store, ds=ds, device=device, progress=progress)]
        return [approximate.unlearn_constituent(plan, entry, store=store, ds=ds, device=device, vault=vault,
                                                progress=progress)]
    if kind == "linear":  # trained (or exactly retrained) from scratch, by the solver or gradient descent
        return linear.train_head(plan, entry, store=store, ds=ds, device=device, progress=progress)
    if kind == "gd":  # trained (or exactly retrained) from scratch by full-batch gradient descent
        return gdnet.train_net(plan, entry, store=store, ds=ds, device=device, progress=progress)
    slice_ids: list[np.ndarray] = [get_ids(store, k) for k in entry.slices]
    r = entry.from_slice
    start = store.get_blob(entry.checkpoints[r - 1]) if r > 0 else None
    verb = "retraining" if entry.status == ShardStatus.RETRAINED else "training"
    progress(f"{verb} shard {shard} from slice {r} (slices 0-{len(slice_ids) - 1})")
    try:
        made = sisa.train_constituent(
            architecture=spec["architecture"],
            architecture_params=spec.get("architecture_params"),
            input_shape=spec["input_shape"],
            num_classes=spec["num_classes"],
            cfg=TrainConfig(**spec["recipe"]),
            shard=shard,
            slice_ids=slice_ids,
            data=device_data(ds, device),
            start_slice=r,
            start_checkpoint=start,
            init_state=_init_state(store, spec),
            progress=progress,
        )
    except KeyError:
        raise DatasetError(f"dataset {spec['dataset']!r} changed while shard {shard} was planned") from None
    return [store.put_blob(c) for c in made]
