"""Importing a model trained elsewhere: its weights become version 1 of a monolithic
model on a dataset, evaluated and served like any other, then unlearned like any other.

Weights come as a safetensors state dict, a ``torch.save``d state dict read with
``weights_only=True`` — never unpickled — or a whole-model archive: TorchScript
(``torch.jit.save``) or ``torch.export`` (``torch.export.save``, a ``.pt2``). An archive
is loaded by torch's own loaders (TorchScript code and export graphs, which cannot run
arbitrary Python) and only its weights are kept: they must fit the named architecture
exactly (every key, every shape; the first mismatch is the error), and the archive's
outputs on the first rows of the dataset must equal the architecture's with those
weights, so a model that merely shares key names with the architecture is refused. The version's manifest is
the dataset's rows at import (what the model is declared to have learned), so a deletion
request for any of its owners covers the model: an approximate method unlearns from the
imported weights, and ``exact`` retrains it from scratch with its recipe on the rows
held then (the honest reference; its cost is a full training run).
"""
from __future__ import annotations

import hashlib
import time

import torch

from models_store import ModelNotFound, ModelStore
from workers.engine import checkpoints, nets
from workers.engine.digests import ids_digest
from workers.engine.errors import ModelError
from workers.engine.ledger import Dataset, check_name
from workers.engine.planning import _create_or_resume, _shard
from workers.engine.plans import Plan, PlanKind, ShardStatus
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig, scaled
from workers.engine.weights import archive_kind, check_outputs, fit, load_archive, read_weights

MONOLITHIC = Strategy("monolithic", holdout=0.0)  # trained elsewhere: it saw every row


def _published_before(store: ModelStore, name: str, spec: dict, digest: str) -> bool:
    """Whether this very import (same spec, same weights, same rows) already published
    version 1: the caller failed to record it (its database went away) and tries again."""
    try:
        if store.model_spec(name) != spec or store.version_numbers(name) != [1]:
            return False
    except ModelNotFound:
        return False
    return store.version(name, 1)["constituents"][0]["weights"] == digest


def plan_import(store: ModelStore, ds: Dataset, name: str, *, architecture: str, weights: bytes,
                architecture_params: dict | None = None, config: TrainConfig = TrainConfig(),
                job: str | None = None) -> Plan | None:
    """Check the weights against the architecture, store them as the model's one
    checkpoint, and plan version 1 (nothing to run: it is published as it is). None when
    this very import (same spec, weights and rows) published version 1 already."""
    started = time.time()
    check_name(name, "model")
    info = ds.info()
    try:
        net = nets.build(architecture, info.input_shape, info.num_classes, seed=0, params=architecture_params)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    arrays = ds.load_arrays(lazy=True)
    if archive_kind(weights):
        state, forward, batch = load_archive(weights)
        fit(net, state)
        k = min(len(arrays.sample_ids), batch or 8)
        check_outputs(net, forward, scaled(arrays.x[:k], info.x_scale, "cpu"))
    else:
        fit(net, read_weights(weights))
    ids = arrays.sample_ids
    spec = {
        "name": name, "dataset": ds.name, "architecture": architecture,
        **({"architecture_params": dict(architecture_params)} if architecture_params else {}),
        "strategy": MONOLITHIC.to_dict(), "recipe": config.to_dict(),
        "input_shape": info.input_shape, "num_classes": info.num_classes, "imported": True,
    }
    ckpt_info = {
        "architecture": architecture,
        **({"architecture_params": dict(architecture_params)} if architecture_params else {}),
        "input_shape": info.input_shape, "num_classes": info.num_classes, "shard": 0, "slice": 0,
        "samples_seen": int(len(ids)), "manifest_digest": ids_digest(ids), "imported": True,
    }
    blob = checkpoints.dumps(net, torch.optim.SGD(net.parameters(), lr=0.0), ckpt_info)
    if _published_before(store, name, spec, hashlib.sha256(blob).hexdigest()):
        return None
    _create_or_resume(store, name, spec)
    digest = store.put_blob(blob)
    return Plan(name, PlanKind.IMPORT, None, job, spec, started,
                [_shard(store, 0, [ids], ShardStatus.IMPORTED, None, [digest])])
