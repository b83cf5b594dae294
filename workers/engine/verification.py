"""Verification metrics of a version about to be published, from the stored artifacts.

Evaluates the version as it will be served (the ensemble of its constituents) on the
pass's forget set (sealed in the evidence vault), a fixed sample of the rows it was trained on, and
the dataset's test split; see ``metrics`` for what each number means.
"""
from __future__ import annotations

import numpy as np
import torch

from models_store import ModelStore
from workers.engine import checkpoints, metrics, sisa
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan
from workers.engine.training import scaled
from workers.engine.vault import Vault

RETAIN_SAMPLE = 2000


def load_ensemble(store: ModelStore, record: dict, device: torch.device) -> sisa.Ensemble | None:
    """A version's constituents as one ensemble (None: every shard was emptied by erasures)."""
    models = [sisa.load_constituent(store.get_blob(c["weights"]), device)
              for c in record["constituents"] if c["n_samples"] > 0]  # an emptied shard has nothing to say
    return sisa.Ensemble(models, record["strategy"]["aggregation"]) if models else None


def l2_to_parent(store: ModelStore, record: dict, parent: dict | None) -> float | None:
    """L2 distance of all weights to the parent version's; unchanged constituents add 0."""
    if parent is None:
        return None

    def state(digest: str) -> dict:
        return checkpoints.loads(store.get_blob(digest)).model_state

    pairs = [(c["weights"], p["weights"]) for c, p in zip(record["constituents"], parent["constituents"])
             if c["weights"] != p["weights"]]
    return round(metrics.l2_distance([state(a) for a, _ in pairs], [state(b) for _, b in pairs]), 6)


def _predictor(store: ModelStore, ds: Dataset, record: dict, device: torch.device):
    """A function from raw rows to the version's class probabilities (None: no constituent)."""
    ensemble = load_ensemble(store, record, device)
    if ensemble is None:
        return None
    x_scale = ds.info().x_scale

    def probs(x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, ds.info().num_classes), np.float32)
        return ensemble.predict_proba(scaled(x, x_scale, device)).cpu().numpy()

    return probs

FORGET_METRICS = ("ua", "mia_efficacy", "loss_auc", "expected_ua")


def _forget_rows(plan: Plan, store: ModelStore, vault: Vault) -> tuple[np.ndarray, np.ndarray] | None:
    if plan.removal is None:
        return None
    ids, x, y = vault.rows(plan.spec["dataset"], plan.evidence)
    keep = np.isin(ids, get_ids(store, plan.removal.sample_ids))
    return x[keep], y[keep].astype(np.int64)


def forget_kl(plan: Plan, reference: dict, record: dict, *, store: ModelStore, ds: Dataset,
              device: torch.device, vault: Vault) -> float | None:
    """Mean KL(reference || version) of output distributions on the plan's forget set."""
    rows = _forget_rows(plan, store, vault)
    ref, mine = _predictor(store, ds, reference, device), _predictor(store, ds, record, device)
    if rows is None or ref is None or mine is None:
        return None
    return metrics.kl_divergence(ref(rows[0]), mine(rows[0]))


def _positions(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(mask)``, as int32 where that holds every position (half the
    memory on millions of rows)."""
    if len(mask) >= 2**31:
        return np.flatnonzero(mask)
    block = 1 << 20
    return np.concatenate([np.flatnonzero(mask[i:i + block]).astype(np.int32) + np.int32(i)
                           for i in range(0, len(mask), block)] or [np.empty(0, np.int32)])


def measure(plan: Plan, record: dict, every_id: np.ndarray, *, store: ModelStore, ds: Dataset,
            device: torch.device, vault: Vault, test_probs: np.ndarray | None = None) -> dict:
    """UA, RA, TA, MIA-efficacy (and on held-out rows), loss AUC and the UA a model that
    never saw the forget set is expected to show, for the version ``record`` describes.

    ``test_probs``: the version's outputs on the test split when the caller has them (the
    candidate aggregates its constituents' cached test outputs), so the ensemble is not
    run over the test split a second time."""
    probs = _predictor(store, ds, record, device)
    if probs is None:
        return {}
    arrays = ds.load_arrays(lazy=True)  # only a sample of the rows is read
    trained = np.isin(arrays.sample_ids, every_id, kind="table")  # no sorts of millions of ids
    rows = np.sort(np.random.default_rng(0).choice(_positions(trained), min(RETAIN_SAMPLE, int(trained.sum())),
                                                   replace=False))
    retain = (probs(arrays.x[rows]), arrays.y[rows].astype(np.int64))
    test = ds.load_test()
    if test is not None:
        test = (test_probs if test_probs is not None else probs(test[0]), test[1].astype(np.int64))
    rows = _forget_rows(plan, store, vault)
    forget = (probs(rows[0]), rows[1]) if rows is not None else None
    out = metrics.evaluate(forget=forget, retain=retain, test=test)
    if forget is not None and test is not None:
        present = np.flatnonzero(np.bincount(arrays.y[trained]))
        out["expected_ua"] = metrics.expected_ua(forget[1], test, present)
    missing = plan.removal.sample_count - len(rows[1]) if rows is not None else 0
    if missing > 0:
        out["forget_rows_missing"] = int(missing)
    if missing > 0 and not len(rows[1]):
        # Nothing to measure on: say why rather than publish empty numbers.
        for key in FORGET_METRICS:
            out.pop(key, None)
        out["forget_metrics_unavailable"] = (
            f"the forget set ({missing} removed samples) is no longer held: the evidence of "
            f"{', '.join(plan.removal.requests) or 'its requests'} was destroyed before this version was measured")
    return out
