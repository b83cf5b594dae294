"""Approximate unlearning of one constituent of a plan: its parent weights, the forget
rows sealed in the evidence vault and its retained rows go to an unlearning method; the result is
stored as a checkpoint that names where it came from."""
from __future__ import annotations

import numpy as np
import torch

from models_store import ModelStore
from workers.engine import checkpoints, placement, sisa, unlearning
from workers.engine.datasets import device_data
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, ForgetSetUnavailable
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan, ShardPlan
from workers.engine.training import DeviceData, derive_seed, scaled
from workers.engine.vault import Vault


def unlearn_constituent(plan: Plan, entry: ShardPlan, *, store: ModelStore, ds: Dataset, device: torch.device,
                        vault: Vault, progress) -> str:
    """Run the plan's method on one constituent; return the new weights' digest."""
    spec, shard = plan.spec, entry.shard
    data = device_data(ds, device)
    kept = np.concatenate([get_ids(store, k) for k in entry.slices])
    forget_ids = get_ids(store, entry.forget_ids)
    forget = unlearning.Split(*forget_inputs(plan, entry, store=store, ds=ds, vault=vault, device=device))
    try:
        positions = data.rows(kept)
        retain = unlearning.Split(data.x[positions], data.labels(positions))
    except KeyError:
        raise DatasetError(f"dataset {spec['dataset']!r} changed while shard {shard} was planned") from None
    unseen = heldout_rows(data, kept, seed=derive_seed(spec["recipe"].get("seed", 0), "heldout", shard))
    # Never the test split: it is what the version's TA reports. A one-shard model trained
    # with holdout 0 (or imported) saw every row, and its method runs without stopping early.
    heldout = unlearning.Split(*unseen) if unseen is not None else None
    heldout_from = None if unseen is None else "other_shards" if len(plan.shards) > 1 else "held_out_owners"
    model = sisa.load_constituent(store.get_blob(entry.parent_weights), device)
    method = plan.method
    progress(f"unlearning {len(forget_ids)} samples from shard {shard} with {method.name}")
    result = unlearning.run(method.name, model, forget, retain, heldout=heldout, overrides=method.config,
                            recipe=spec.get("recipe"))
    info = {
        "architecture": spec["architecture"],
        **({"architecture_params": spec["architecture_params"]} if spec.get("architecture_params") else {}),
        "input_shape": spec["input_shape"],
        "num_classes": spec["num_classes"],
        "shard": shard,
        "samples_seen": int(len(kept)),
        "manifest_digest": ids_digest(kept),
        "unlearned_from": entry.parent_weights,
        "forgot_sample_ids_digest": ids_digest(forget_ids),
        "method": {"name": method.name, "config": result.config},  # as it ran: relative defaults resolved
        "heldout": heldout_from,  # what the method's stopping rule took as data never trained on
    }
    blob = checkpoints.dumps(result.model, torch.optim.SGD(result.model.parameters(), lr=0.0), info)
    return store.put_blob(blob)


HELDOUT_ROWS = 4096  # at most this many unseen rows for a method's stopping rule
MIN_HELDOUT_ROWS = placement.HOLDOUT_MIN_ROWS  # fewer, and the method does without a stopping rule


def heldout_rows(data: DeviceData, kept: np.ndarray, *, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows the constituent never trained on, for a method's stopping rule: a seeded
    sample of the dataset's rows held now outside its shard (the other shards' rows, on
    a SISA model; the owners ``strategy.holdout`` kept out of training, on one shard).
    Training rows, not the test split, so the test accuracy reported for the version is
    not also what tuned the method. None when fewer than MIN_HELDOUT_ROWS."""
    unseen = data.sample_ids[~np.isin(data.sample_ids, kept, kind="table")]
    if len(unseen) < MIN_HELDOUT_ROWS:
        return None
    if len(unseen) > HELDOUT_ROWS:
        unseen = np.sort(np.random.default_rng(seed).choice(unseen, HELDOUT_ROWS, replace=False))
    positions = data.rows(unseen)
    return data.x[positions], data.labels(positions)


def forget_inputs(plan: Plan, entry: ShardPlan, *, store: ModelStore, ds: Dataset, vault: Vault,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The constituent's forget rows, from the evidence vault, as model inputs and labels
    on ``device``; ForgetSetUnavailable when some are no longer held."""
    forget_ids = get_ids(store, entry.forget_ids)
    ids, x, y = vault.rows(plan.spec["dataset"], plan.evidence)
    rows = np.isin(ids, forget_ids)
    if rows.sum() != len(forget_ids):
        raise ForgetSetUnavailable(f"shard {entry.shard}: the forget set is no longer available; "
                                   "unlearn exactly instead")
    return scaled(x[rows], ds.info().x_scale, device), torch.as_tensor(y[rows].astype(np.int64)).to(device)
