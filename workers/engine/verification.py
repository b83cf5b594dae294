"""Verification metrics of a version about to be published, from the stored artifacts.

Evaluates the version as it will be served (the ensemble of its constituents) on the
job's forget set (kept in scratch), a fixed sample of the rows it was trained on, and
the dataset's test split; see ``metrics`` for what each number means.
"""
from __future__ import annotations

import numpy as np
import torch

from workers.engine import checkpoints, metrics, sisa

RETAIN_SAMPLE = 2000


def _state(engine, digest: str) -> dict:
    return checkpoints.loads(engine.store.get_blob(digest)).model_state


def l2_to_parent(engine, record: dict, parent: dict | None) -> float | None:
    """L2 distance of all weights to the parent version's; unchanged constituents add 0."""
    if parent is None:
        return None
    pairs = [(c["weights"], p["weights"]) for c, p in zip(record["constituents"], parent["constituents"])
             if c["weights"] != p["weights"]]
    return round(metrics.l2_distance([_state(engine, a) for a, _ in pairs], [_state(engine, b) for _, b in pairs]), 6)


def _predictor(engine, plan: dict, record: dict):
    """A function from raw rows to the version's class probabilities (None: no constituent)."""
    spec = plan["spec"]
    scale = np.float32(engine.dataset(spec["dataset"]).info().x_scale)
    models = [sisa.load_constituent(engine.store.get_blob(c["weights"]), engine.device)
              for c in record["constituents"] if c["n_samples"] > 0]
    if not models:
        return None
    ensemble = sisa.Ensemble(models, spec["strategy"]["aggregation"])

    def probs(x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, spec["num_classes"]), np.float32)
        return ensemble.predict_proba(torch.as_tensor(x.astype(np.float32) * scale).to(engine.device)).cpu().numpy()

    return probs


def _forget_rows(engine, plan: dict) -> tuple[np.ndarray, np.ndarray] | None:
    removed = (plan.get("removal") or {}).get("sample_ids")
    if removed is None:
        return None
    ids, x, y = engine.scratch.load(plan.get("scratch"))
    keep = np.isin(ids, engine.get_ids(removed))
    return x[keep], y[keep].astype(np.int64)


def forget_kl(engine, plan: dict, reference: dict, record: dict) -> float | None:
    """Mean KL(reference || version) of output distributions on the plan's forget set."""
    rows = _forget_rows(engine, plan)
    ref, mine = _predictor(engine, plan, reference), _predictor(engine, plan, record)
    if rows is None or ref is None or mine is None:
        return None
    return metrics.kl_divergence(ref(rows[0]), mine(rows[0]))


def measure(engine, plan: dict, record: dict, every_id: np.ndarray) -> dict:
    """UA, RA, TA, MIA-efficacy (and on held-out rows), loss AUC and the UA a model that
    never saw the forget set is expected to show, for the version ``record`` describes."""
    ds = engine.dataset(plan["spec"]["dataset"])
    probs = _predictor(engine, plan, record)
    if probs is None:
        return {}
    arrays = ds.load_arrays()
    trained = np.flatnonzero(np.isin(arrays.sample_ids, every_id))
    rows = np.sort(np.random.default_rng(0).choice(trained, min(RETAIN_SAMPLE, len(trained)), replace=False))
    retain = (probs(arrays.x[rows]), arrays.y[rows].astype(np.int64))
    test = ds.load_test()
    test = (probs(test[0]), test[1].astype(np.int64)) if test is not None else None
    rows = _forget_rows(engine, plan)
    forget = (probs(rows[0]), rows[1]) if rows is not None else None
    out = metrics.evaluate(forget=forget, retain=retain, test=test)
    if forget is not None and test is not None:
        present = np.unique(arrays.y[trained])
        out["expected_ua"] = metrics.expected_ua(forget[1], test, present)
    return out

