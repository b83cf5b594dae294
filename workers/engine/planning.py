"""Planning: which constituents a pass trains, retrains, reuses or unlearns, and from where.

``plan_train`` cuts a new model's shards and slices along owners. ``plan_unlearn``
compares the latest version's manifest with what the dataset holds now (the owners are
erased before planning) and plans the touched shards only.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from models_store import ModelNotFound, ModelStore
from workers.engine import gdnet, linear, nets, placement, sisa, unlearning, weights
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, MethodNotSupported, ModelError
from workers.engine.ids import put_ids, slice_ids
from workers.engine.ledger import ChunkedRows, Dataset, check_name
from workers.engine.plans import MethodSpec, Plan, PlanKind, Removal, ShardPlan, ShardStatus
from workers.engine.training import TrainConfig, derive_seed
from workers.engine.vault import Vault

MODES = {"sisa": PlanKind.UNLEARN, "full": PlanKind.FULL_RETRAIN, "approximate": PlanKind.APPROXIMATE}


def store_backbone(store: ModelStore, ds: Dataset, *, architecture: str, architecture_params: dict | None,
                   data: bytes) -> dict:
    """Keep the part of a pretrained checkpoint (a backbone) that fits ``architecture`` on
    ``ds`` as a blob: ``{"digest", "keys", "skipped"}``. A recipe names the digest
    (``init``) to start every constituent from it."""
    from safetensors.torch import save as st_save

    info = ds.info()
    try:
        net = nets.build(architecture, info.input_shape, info.num_classes, seed=0, params=architecture_params)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    fits, skipped = weights.backbone(net, weights.state_dict_of(data))
    return {"digest": store.put_blob(st_save(fits)), "keys": sorted(fits), "skipped": skipped}


def owner_order(ds: Dataset, partition: str, ids: np.ndarray, codes: np.ndarray, names: list[str],
                shards: int) -> np.ndarray | None:
    """The order owners are laid out in before shards are cut (``placement``); None for
    ``balanced``. Reads the labels, or the rows block by block for ``kmeans``."""
    if partition == "balanced" or shards == 1:
        return None
    by_id = np.argsort(ids, kind="stable")
    sorted_ids = ids[by_id]

    def codes_of(sample_ids: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(sorted_ids, sample_ids), len(sorted_ids) - 1)
        if not np.array_equal(sorted_ids[at], sample_ids):  # the two reads saw different rows
            raise DatasetError("the dataset changed while its shards were cut; train again")
        return codes[by_id[at]]

    info = ds.info()
    arrays = ds.load_arrays(lazy=True)
    if partition == "label":
        return placement.label_order(codes_of(arrays.sample_ids), arrays.y, len(names), info.num_classes)
    parts = arrays.x.parts if isinstance(arrays.x, ChunkedRows) else [arrays.x]
    starts = np.cumsum([0] + [len(p) for p in parts])
    blocks = ((arrays.sample_ids[a:a + len(p)], p) for p, a in zip(parts, starts))
    counts = np.bincount(codes, minlength=len(names))
    embedding = placement.owner_embedding(blocks, codes_of, counts, int(np.prod(info.input_shape)))
    return placement.kmeans_order(embedding, counts.astype(np.float64), shards)


def _linear_head(architecture: str, params: dict | None, config: TrainConfig) -> tuple[str, dict | None]:
    """The linear kind's head: on the raw rows (architecture ``linear``), or on the
    penultimate features of ``architecture`` frozen at the weights of a backbone
    pretrained elsewhere (the recipe's ``init``, required)."""
    if architecture in ("linear", linear.ARCHITECTURE):
        if params:
            raise ModelError("the linear kind's head on raw rows takes no architecture parameters")
        return linear.ARCHITECTURE, None
    if config.init is None:
        raise ModelError(f"a linear head over {architecture!r} features needs that network's pretrained weights: "
                         f"upload a backbone (POST /v1/backbones) and name it as training.init")
    return linear.ARCHITECTURE, {"features": {"architecture": architecture, "params": dict(params or {})}}


def plan_train(store: ModelStore, ds: Dataset, name: str, *, architecture: str, strategy: sisa.Strategy,
               config: TrainConfig, job: str | None = None, architecture_params: dict | None = None) -> Plan:
    """Check the request, create the model in the store and cut its shards and slices.
    A recipe's ``init`` (a backbone's blob, see :func:`store_backbone`) must be stored."""
    started = time.time()
    check_name(name, "model")
    info = ds.info()
    if strategy.kind == "linear":
        architecture, architecture_params = _linear_head(architecture, architecture_params, config)
    try:
        nets.build(architecture, info.input_shape, info.num_classes, seed=0, params=architecture_params)
        ids, codes, names = ds.owner_codes()
        order = owner_order(ds, strategy.partition, ids, codes, names, strategy.shards)
        held = placement.held_out(codes, len(names), strategy.holdout, seed=derive_seed(config.seed, "holdout"))
        if len(held):  # these owners' rows stay out of every shard, in every later version too
            training = ~np.isin(codes, held)
            ids, codes = ids[training], codes[training]
        slices = sisa.partition_owners(ids, codes, names, strategy.shards, strategy.slices, order)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if config.init is not None and not store.has_blob(config.init):
        raise ModelError(f"the recipe's init names no stored backbone ({config.init[:16]}...)")
    if architecture_params and "features" in architecture_params and strategy.kind == "linear":
        linear.head_model({"input_shape": info.input_shape, "num_classes": info.num_classes,
                           "architecture_params": architecture_params, "recipe": config.to_dict()},
                          store, torch.device("cpu"))  # ModelError now, not in a worker, if the backbone lacks keys
    spec = {
        "name": name,
        "dataset": ds.name,
        "architecture": architecture,
        **({"architecture_params": dict(architecture_params)} if architecture_params else {}),
        "strategy": strategy.to_dict(),
        "recipe": config.to_dict(),
        "input_shape": info.input_shape,
        "num_classes": info.num_classes,
    }
    if strategy.kind == "gd":
        gdnet.check(spec)  # its trajectory must fit
    _create_or_resume(store, name, spec)
    shards = [_shard(store, shard, ids, ShardStatus.TRAINED, 0, []) for shard, ids in enumerate(slices)]
    return Plan(name, PlanKind.TRAIN, None, job, spec, started, shards)


def plan_unlearn(store: ModelStore, ds: Dataset, name: str, *, mode: str = "sisa", method: str | None = None,
                 method_config: dict | None = None, requests: list[str] | None = None, job: str | None = None,
                 vault: Vault | None = None, evidence: list[str] = ()) -> Plan | None:
    """Plan removing from model ``name`` every sample its latest version holds that the
    dataset no longer does.

    ``sisa`` retrains the touched shards from their earliest touched slice (and any
    constituent an approximate pass left tainted); ``full`` retrains every shard from
    scratch; ``approximate`` runs ``method`` on each touched constituent, from the
    forget rows sealed in ``vault`` for the requests behind the removal (and for the
    extra keys ``evidence``); when some are no longer held (their evidence was
    destroyed), such a pass is planned exactly instead. Returns None when there is
    nothing to remove (``sisa``, ``approximate``).
    """
    check_request(mode, method, method_config)
    started = time.time()
    spec = store.model_spec(name)
    if mode == "approximate":
        check_kind(method, spec["strategy"])
    parent = store.version(name)
    parent_slices = slice_ids(store, parent)
    # A lookup table over the id range, not setdiff1d's sorts (on 7.8 million rows those
    # took 600 MiB more at their peak, bench/larger_than_memory.py), slice by slice: the
    # slices' id lists are memory-mapped, and one list of every trained id with its
    # temporaries was the unlearn step's peak.
    held = ds.sample_ids()
    removed = np.sort(np.concatenate([ids[~np.isin(ids, held, kind="table")]
                                      for slices in parent_slices for ids in slices] or [np.empty(0, np.int64)]))
    del held
    tainted_any = any(c.get("tainted_from_slice") is not None for c in parent["constituents"])
    if mode != "full" and not len(removed) and not (mode == "sisa" and tainted_any):
        return None
    removal = _removal(store, ds, removed, requests)
    keys = sorted(set(removal.requests) | set(evidence))
    if mode == "approximate" and (vault is None or not np.isin(removed, vault.rows(ds.name, keys)[0]).all()):
        mode = "sisa"
    touched = ({s: 0 for s in range(len(parent_slices))} if mode == "full"
               else sisa.first_touched_slices(parent_slices, removed))
    shards = []
    for shard, slices in enumerate(parent_slices):
        constituent = parent["constituents"][shard]
        old = [s["checkpoint"] for s in constituent["slices"]]
        tainted = constituent.get("tainted_from_slice")
        if mode == "sisa" and tainted is not None:
            # An approximate removal left its trace from this slice on: retrain from there.
            touched[shard] = min(touched.get(shard, tainted), tainted)
        if shard not in touched:
            shards.append(_shard(store, shard, slices, ShardStatus.REUSED, None, old,
                                 test_probs=constituent.get("test_probs"),
                                 retain_probs=constituent.get("retain_probs"), tainted_from_slice=tainted,
                                 parent_weights=constituent["weights"]))
            continue
        r = touched[shard]
        kept = [ids[~np.isin(ids, removed)] for ids in slices]  # sorted already: no setdiff1d sorts
        if mode == "approximate":
            forgot = np.intersect1d(np.concatenate(slices), removed)
            shards.append(_shard(store, shard, kept, ShardStatus.APPROXIMATE, r, old,
                                 parent_weights=constituent["weights"], forget_ids=put_ids(store, forgot),
                                 tainted_from_slice=min(r, tainted) if tainted is not None else r))
        else:
            shards.append(_shard(store, shard, kept, ShardStatus.RETRAINED, r, old[:r]))
    plan = Plan(name, MODES[mode], parent["version"], job, spec, started, shards,
                removal=removal, evidence=keys)
    if mode == "approximate":
        # Relative defaults made absolute, so the plan and the version record what runs; the
        # retain set is the touched constituents' (shards are balanced: their mean).
        rows = [sum(s.slice_sizes) for s in shards if s.status == ShardStatus.APPROXIMATE]
        context = unlearning.Context.of(spec["recipe"], int(np.mean(rows)))
        plan.method = MethodSpec(method, dataclasses.asdict(unlearning.resolve(method, unlearning.config(
            method, method_config), context)))
    return plan


def check_request(mode: str, method: str | None = None, method_config: dict | None = None) -> None:
    """ModelError unless ``mode`` is known and, for ``approximate``, ``method`` is a
    registered method and its overrides are its own (checked before anything is erased)."""
    if mode not in MODES:
        raise ModelError(f"unlearning mode must be 'sisa', 'full' or 'approximate', got {mode!r}")
    if mode == "approximate":
        try:
            unlearning.config(method, method_config)
        except ValueError as exc:
            raise ModelError(str(exc)) from None


def check_kind(method: str | None, strategy: dict) -> None:
    """MethodNotSupported when ``method`` does not run on a model of ``strategy``."""
    why = unlearning.unsupported(method, strategy)
    if why is not None:
        raise MethodNotSupported(why)


def _shard(store: ModelStore, shard: int, slices: list[np.ndarray], status: ShardStatus, from_slice,
           checkpoints_kept, **extra) -> ShardPlan:
    return ShardPlan(shard, status, from_slice, [put_ids(store, ids) for ids in slices],
                     [int(len(ids)) for ids in slices], list(checkpoints_kept), **extra)


def _create_or_resume(store: ModelStore, name: str, spec: dict) -> None:
    try:
        existing = store.model_spec(name)
    except ModelNotFound:
        store.create_model(name, spec)
        return
    # A crashed training run may be resumed with the same spec; anything else clashes.
    if existing != spec or store.version_numbers(name):
        raise ModelError(f"model {name!r} already exists")


def _removal(store: ModelStore, ds: Dataset, removed: np.ndarray, requests: list[str] | None) -> Removal:
    """The erasures the removed samples came from, and the requests they answer."""
    owners, refs = [], list(requests or [])
    for e in ds.erasures():
        if np.isin(np.asarray(e.sample_ids, dtype=np.int64), removed).any():
            owners.append({"owner_id": e.owner_id, "sample_count": len(e.sample_ids), "digest": e.digest})
            refs.extend(r for r in (e.reference or "").split(",") if r)
    return Removal(owners, sorted(set(refs)), int(len(removed)), ids_digest(removed), put_ids(store, removed))
