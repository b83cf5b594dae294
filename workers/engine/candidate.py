"""A candidate version: the record a plan and its shards' results make, with its test
accuracy and verification metrics, not yet published (an approximate one must pass the
service's gate first)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from models_store import ModelStore
from workers.engine import linear, sisa, verification
from workers.engine.datasets import test_tensors
from workers.engine.digests import ids_digest, sha256_bytes
from workers.engine.errors import ModelError
from workers.engine.ids import get_ids, put_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan, PlanKind, ShardStatus
from workers.engine.vault import Vault


def build(plan: Plan, results: dict[int, list[str]], seconds: dict[int, float] | None, *, store: ModelStore,
          ds: Dataset, device: torch.device, vault: Vault) -> dict:
    """The version record for ``plan``, given each run shard's new checkpoints (or, for an
    approximate shard, its new weights) and the seconds each took.

    Each constituent's probabilities on the test split and on the retain sample are
    stored too, so a reused constituent is not evaluated again: its weights and the test
    split are unchanged, and the retain sample changes only where rows were removed.
    """
    results = {int(k): v for k, v in results.items()}
    seconds = {int(k): v for k, v in (seconds or {}).items()}
    rte = sum(seconds.values()) if seconds else None
    spec = plan.spec
    test = test_tensors(ds, device)
    outputs = verification.Outputs(store, device)
    constituents, artifacts, probs, every_id, head_reports = [], {}, [], [], {}
    for entry in plan.shards:
        shard, weights = entry.shard, None
        if entry.status == ShardStatus.APPROXIMATE:
            ckpts, weights = entry.checkpoints, results[shard][0]
        else:
            ckpts = entry.checkpoints + list(results.get(shard, []))
        if entry.status == ShardStatus.REUSED and entry.parent_weights not in (None, ckpts[-1] if ckpts else None):
            # An approximately unlearned constituent, reused: it keeps serving its unlearned
            # weights, never the slice checkpoint they were derived from.
            weights = entry.parent_weights
        if len(ckpts) != len(entry.slices):
            raise ModelError(f"shard {shard} has {len(ckpts)} checkpoints for {len(entry.slices)} slices")
        slices_out = []
        for r, (ids_key, n, ckpt_key) in enumerate(zip(entry.slices, entry.slice_sizes, ckpts)):
            artifacts[f"shard{shard}.slice{r}.sample_ids"] = ids_key
            artifacts[f"shard{shard}.slice{r}.checkpoint"] = ckpt_key
            slices_out.append({"sample_ids": ids_key, "n_samples": n, "checkpoint": ckpt_key})
        parts = [get_ids(store, s["sample_ids"]) for s in slices_out]
        all_ids = parts[0] if len(parts) == 1 else np.concatenate(parts)  # a view of the stored list when whole
        every_id.append(all_ids)
        state = entry.status.value
        constituent = {
            "shard": shard,
            "status": state,
            "retrained_from_slice": entry.from_slice if entry.status != ShardStatus.APPROXIMATE else None,
            "n_samples": int(len(all_ids)),
            "manifest_digest": ids_digest(all_ids),
            "weights": weights or slices_out[-1]["checkpoint"],
            "slices": slices_out,
            "test_probs": None,
            "retain_probs": None,
        }
        if entry.tainted_from_slice is not None:
            # The checkpoints of slices from here on (and approximate weights) still carry
            # the influence of samples removed approximately; an exact pass retrains from here.
            constituent["tainted_from_slice"] = entry.tainted_from_slice
        if weights is not None:
            artifacts[f"shard{shard}.weights"] = weights
        head = linear.head_metrics(store, constituent["weights"], spec["strategy"])
        if any(report["retrained"] for report in head.values()):  # retrained from scratch: exact
            constituent.pop("tainted_from_slice", None)
        head_reports.update(head)
        if test is not None and len(all_ids):
            cached = entry.test_probs
            if entry.status == ShardStatus.REUSED and cached:
                p = np.frombuffer(store.get_blob(cached), dtype="<f4").reshape(len(test[1]), -1).copy()
            else:
                p = outputs.run(constituent["weights"], test[0])
                cached = store.put_blob(p.tobytes())
            artifacts[f"shard{shard}.test_probs"] = constituent["test_probs"] = cached
            probs.append(torch.as_tensor(p))
        constituents.append(constituent)
    metrics = dict(head_reports)  # a linear model's one head: certified or deltagrad
    test_probs = None
    if probs:
        test_probs = sisa.aggregate(torch.stack(probs), spec["strategy"]["aggregation"]).numpy()
        predicted = test_probs.argmax(1).astype("<i8")
        metrics["test_accuracy"] = round(float((predicted == test[1].cpu().numpy()).mean()), 6)
        # Lets anyone check that a reloaded version still predicts what it did at publish.
        metrics["test_predictions_sha256"] = sha256_bytes(predicted.tobytes())
    else:
        metrics["test_accuracy"] = None
    every_id = np.concatenate(every_id)
    every_id.sort()  # in place: the manifest digest then needs no sorted copy of millions of ids
    parent = store.version(plan.model, plan.parent) if plan.parent is not None else None
    rows, retain = _retain_outputs(plan, constituents, artifacts, parent, every_id, outputs, store=store, ds=ds,
                                   device=device)
    # Doing nothing, measured alike: an approximate candidate must do better than its parent.
    no_op = (_stored_outputs(parent, rows, test, outputs, store=store)
             if plan.kind == PlanKind.APPROXIMATE and parent is not None and retain is not None else None)
    record = {
        "kind": plan.kind.value,
        "exact": all(c.get("tainted_from_slice") is None for c in constituents),
        "method": ({"name": plan.method.name, "config": plan.method.config} if plan.method
                   else {"name": plan.kind.value if plan.kind.value in ("train", "imported") else "exact"}),
        "job": plan.job,
        "dataset": spec["dataset"],
        "architecture": spec["architecture"],
        **({"architecture_params": spec["architecture_params"]} if spec.get("architecture_params") else {}),
        "strategy": spec["strategy"],
        "recipe": spec["recipe"],
        "device": device.type,
        "constituents": constituents,
        "n_samples": int(len(every_id)),
        "manifest_digest": ids_digest(every_id),
        "artifacts": artifacts,
        "removed": (dataclasses.asdict(plan.removal) if plan.removal
                    else {"owners": [], "requests": [], "sample_count": 0}),
        "metrics": {
            **metrics,
            "wall_seconds": round(time.time() - plan.started_at, 3),
            "rte_seconds": round(rte, 3) if rte is not None else None,
            "retrained_shards": [c["shard"] for c in constituents if c["status"] in ("trained", "retrained")],
            "approximate_shards": [c["shard"] for c in constituents if c["status"] == "approximate"],
            "reused_shards": [c["shard"] for c in constituents if c["status"] == "reused"],
        },
    }
    record["metrics"].update(verification.measure(plan, record, every_id, store=store, ds=ds, device=device,
                                                  vault=vault, test_probs=test_probs, retain=retain,
                                                  outputs=outputs, no_op=no_op))
    record["metrics"]["l2_to_parent"] = verification.l2_to_parent(store, record, parent)
    return record


def _retain_outputs(plan: Plan, constituents: list[dict], artifacts: dict, parent: dict | None,
                    every_id: np.ndarray, outputs: verification.Outputs, *, store: ModelStore, ds: Dataset,
                    device: torch.device) -> tuple[verification.Retain, tuple[np.ndarray, np.ndarray] | None]:
    """The retain sample's rows, and the version's probabilities and the labels on them,
    aggregated from each constituent's outputs (a reused one's from the parent's stored
    outputs, run only on rows new to the sample); each constituent's are stored for the
    next pass."""
    rows = verification.retain_rows(ds, every_id, device)
    stored_ids = None
    if parent is not None and "retain_sample_ids" in parent["artifacts"]:
        stored_ids = get_ids(store, parent["artifacts"]["retain_sample_ids"])
    artifacts["retain_sample_ids"] = put_ids(store, rows.ids)
    probs = []
    for entry, constituent in zip(plan.shards, constituents):
        if not constituent["n_samples"]:
            continue
        stored = entry.retain_probs if entry.status == ShardStatus.REUSED else None
        p = outputs.cached(constituent["weights"], rows.x, rows.ids, stored, stored_ids)
        artifacts[f"shard{entry.shard}.retain_probs"] = constituent["retain_probs"] = store.put_blob(p.tobytes())
        probs.append(torch.as_tensor(p))
    if not probs:
        return rows, None
    return rows, (sisa.aggregate(torch.stack(probs), plan.spec["strategy"]["aggregation"]).numpy(), rows.y)


def _stored_outputs(parent: dict, rows: verification.Retain, test: tuple | None, outputs: verification.Outputs, *,
                    store: ModelStore) -> verification.NoOp | None:
    """The parent version's probabilities on this pass's retain sample and on the test
    split, from its constituents' stored outputs (run only where a row is missing), and a
    predictor for the forget set: what publishing the parent unchanged would show."""
    live = [c for c in parent["constituents"] if c["n_samples"] > 0]
    if not live or test is None:
        return None
    stored_ids = (get_ids(store, parent["artifacts"]["retain_sample_ids"])
                  if "retain_sample_ids" in parent["artifacts"] else None)
    retain, tests = [], []
    for c in live:
        retain.append(outputs.cached(c["weights"], rows.x, rows.ids, c.get("retain_probs"), stored_ids))
        if c.get("test_probs"):
            tests.append(np.frombuffer(store.get_blob(c["test_probs"]), dtype="<f4").reshape(len(test[1]), -1))
        else:
            tests.append(outputs.run(c["weights"], test[0]))

    def aggregate(parts: list[np.ndarray]) -> np.ndarray:
        return sisa.aggregate(torch.stack([torch.as_tensor(p.copy()) for p in parts]),
                              parent["strategy"]["aggregation"]).numpy()

    return verification.NoOp(retain=aggregate(retain), test=aggregate(tests),
                             forget=lambda x: aggregate([outputs.run(c["weights"], x) for c in live]))


def no_op_before(plan: Plan, *, store: ModelStore, ds: Dataset, device: torch.device, vault: Vault) -> dict | None:
    """The parent measured on the plan's forget set before any method runs, from its
    stored outputs on its retain sample (less the rows removed) and the test split, and
    one run over the forget rows (``verification.measure_no_op``); None where it cannot be."""
    if plan.parent is None:
        return None
    parent = store.version(plan.model, plan.parent)
    if "retain_sample_ids" not in parent["artifacts"]:
        return None
    rows = verification.held_rows(ds, get_ids(store, parent["artifacts"]["retain_sample_ids"]), device)
    no_op = _stored_outputs(parent, rows, test_tensors(ds, device), verification.Outputs(store, device), store=store)
    if no_op is None:
        return None
    return verification.measure_no_op(plan, no_op, rows, store=store, ds=ds, device=device, vault=vault)

