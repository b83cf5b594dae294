"""Verification metrics of a version about to be published, from the stored artifacts.

Evaluates the version as it will be served (the ensemble of its constituents) on the
pass's forget set (sealed in the evidence vault), a fixed sample of the rows it was trained on, and
the dataset's test split; see ``metrics`` for what each number means.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from models_store import ModelStore
from workers.engine import checkpoints, metrics, sisa
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan
from workers.engine.training import predict_proba, scaled
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


class Outputs:
    """Each constituent's class probabilities on rows, its model loaded at most once.

    ``cached`` reads a reused constituent's stored outputs (its weights are unchanged, so
    they still hold) and runs the model only on the rows they lack, so a pass that
    changed one shard of eight evaluates one shard, not eight."""

    def __init__(self, store: ModelStore, device: torch.device):
        self.store, self.device = store, device
        self._models: dict[str, torch.nn.Module] = {}

    def run(self, weights: str, x: torch.Tensor) -> np.ndarray:
        if weights not in self._models:
            self._models[weights] = sisa.load_constituent(self.store.get_blob(weights), self.device)
        return predict_proba(self._models[weights], x).cpu().numpy().astype("<f4")

    def cached(self, weights: str, x: torch.Tensor, ids: np.ndarray, stored: str | None,
               stored_ids: np.ndarray | None) -> np.ndarray:
        """Outputs on rows ``ids`` (sorted; ``x`` their inputs), from ``stored`` (outputs on
        ``stored_ids``, sorted) where it has the row."""
        if stored is None or stored_ids is None or not len(stored_ids):
            return self.run(weights, x)
        old = np.frombuffer(self.store.get_blob(stored), dtype="<f4").reshape(len(stored_ids), -1)
        at = np.minimum(np.searchsorted(stored_ids, ids), len(stored_ids) - 1)
        have = stored_ids[at] == ids
        out = np.empty((len(ids), old.shape[1]), "<f4")
        out[have] = old[at[have]]
        if not have.all():
            out[~have] = self.run(weights, x[torch.as_tensor(np.flatnonzero(~have))])
        return out

    def predictor(self, record: dict, info):
        """A function from rows (raw, or model inputs on the device) to the version's
        probabilities (None: no constituent). ``info``: the dataset's (scale, classes)."""
        weights = [c["weights"] for c in record["constituents"] if c["n_samples"] > 0]
        if not weights:
            return None

        def probs(x: np.ndarray | torch.Tensor) -> np.ndarray:
            if not len(x):
                return np.zeros((0, info.num_classes), np.float32)
            inputs = x if isinstance(x, torch.Tensor) else scaled(x, info.x_scale, self.device)
            return sisa.aggregate(torch.stack([torch.as_tensor(self.run(w, inputs)) for w in weights]),
                                  record["strategy"]["aggregation"]).numpy()

        return probs


def _predictor(store: ModelStore, ds: Dataset, record: dict, device: torch.device):
    return Outputs(store, device).predictor(record, ds.info())


def _mix(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id: a fixed pseudo-random order of the ids."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def retain_sample(every_id: np.ndarray, k: int = RETAIN_SAMPLE, block: int = 1 << 18) -> np.ndarray:
    """The ids (ascending) of the trained rows the retain metrics are measured on: the
    ``k`` whose hash is smallest. The same rows from version to version, but for the ones
    removed (replaced by the next in hash order), so each constituent's stored outputs
    on them stay valid. Read in blocks (the hash's temporaries are a few times a block's
    size): memory stays flat on millions of ids, and the sample does not depend on the block."""
    best = np.empty(0, np.int64)
    for i in range(0, len(every_id), block):
        pool = np.concatenate([best, np.asarray(every_id[i:i + block], dtype=np.int64)])
        if len(pool) > k:
            pool = pool[np.argpartition(_mix(pool), k - 1)[:k]]
        best = pool
    return np.sort(best)


class Retain(NamedTuple):
    ids: np.ndarray  # ascending
    x: torch.Tensor  # model inputs on the device
    y: np.ndarray


def retain_rows(ds: Dataset, every_id: np.ndarray, device: torch.device) -> Retain:
    """The retain sample's rows still held (an erasure may race a pass; its rows drop out)."""
    return held_rows(ds, retain_sample(every_id), device)


def held_rows(ds: Dataset, ids: np.ndarray, device: torch.device) -> Retain:
    """The rows of ``ids`` (ascending) that the dataset still holds."""
    held = ds.rows(ids)  # only these rows are read, chunk by chunk: not every row's id and label
    return Retain(held.sample_ids, scaled(held.x, ds.info().x_scale, device), held.y.astype(np.int64))


def trained_classes(ds: Dataset, every_id: np.ndarray | None = None) -> np.ndarray:
    """The classes (ascending) of the rows the dataset holds, of those in ``every_id``
    only when given: read chunk by chunk, so neither the dataset's ids nor its labels are
    held whole (on 7.8 million rows they took 93 MiB, and the membership mask more)."""
    if every_id is not None and len(every_id) > 1 and not (every_id[1:] >= every_id[:-1]).all():
        every_id = np.sort(every_id)
    counts = np.zeros(0, np.int64)
    for ids, y in ds.load_chunks().blocks():
        if every_id is not None:
            if not len(every_id):
                break
            at = np.minimum(np.searchsorted(every_id, ids), len(every_id) - 1)
            y = np.asarray(y)[every_id[at] == ids]
        found = np.bincount(y)
        if len(found) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(found) - len(counts), np.int64)])
        counts[:len(found)] += found
    return np.flatnonzero(counts)


FORGET_METRICS = ("ua", "mia_efficacy", "loss_auc", "expected_ua")
NO_OP_METRICS = ("ua", "ra", "ta", "mia_efficacy", "mia_heldout", "expected_ua")


class NoOp(NamedTuple):
    """The parent version's probabilities on the pass's retain sample and test split, and
    a function from forget inputs (on the device) to its probabilities there: doing
    nothing, to be measured alike."""
    retain: np.ndarray
    test: np.ndarray
    forget: Callable[[torch.Tensor], np.ndarray]


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


def measure(plan: Plan, record: dict, every_id: np.ndarray, *, store: ModelStore, ds: Dataset,
            device: torch.device, vault: Vault, test_probs: np.ndarray | None = None,
            retain: tuple[np.ndarray, np.ndarray] | None = None, outputs: Outputs | None = None,
            no_op: NoOp | None = None) -> dict:
    """UA, RA, TA, MIA-efficacy (and on held-out rows), loss AUC and the UA a model that
    never saw the forget set is expected to show, for the version ``record`` describes.

    ``test_probs`` and ``retain`` (probabilities and labels on the retain sample): the
    version's outputs when the caller has them (the candidate aggregates its
    constituents' stored outputs), so the ensemble is not run over those rows again;
    without them every constituent is evaluated afresh (what a check of the cache runs).
    ``no_op``: the parent's outputs; its metrics on the same rows go under ``no_op`` (what
    publishing it unchanged would show), for the gate to compare with."""
    outputs = outputs or Outputs(store, device)
    probs = outputs.predictor(record, ds.info())
    if probs is None:
        return {}
    if retain is None:
        rows = retain_rows(ds, every_id, device)
        retain = (probs(rows.x), rows.y)
    test = ds.load_test()
    if test is not None:
        test = (test_probs if test_probs is not None else probs(test[0]), test[1].astype(np.int64))
    rows = _forget_rows(plan, store, vault)
    forget = (probs(rows[0]), rows[1]) if rows is not None else None
    out = metrics.evaluate(forget=forget, retain=retain, test=test)
    if forget is not None and test is not None:
        present = trained_classes(ds, every_id)  # the classes the version trained on
        out["expected_ua"] = metrics.expected_ua(forget[1], test, present)
        if no_op is not None and len(forget[1]):
            out["no_op"] = _no_op_metrics(no_op, rows, retain[1], test[1], present, ds, outputs.device)
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


def _no_op_metrics(no_op: NoOp, forget: tuple[np.ndarray, np.ndarray], retain_y: np.ndarray, test_y: np.ndarray,
                   present: np.ndarray, ds: Dataset, device: torch.device) -> dict:
    """The parent's metrics (``NO_OP_METRICS``) on the forget rows (raw inputs, labels)."""
    probs = no_op.forget(scaled(forget[0], ds.info().x_scale, device))
    before = metrics.evaluate(forget=(probs, forget[1]), retain=(no_op.retain, retain_y), test=(no_op.test, test_y))
    before["expected_ua"] = metrics.expected_ua(forget[1], (no_op.test, test_y), present)
    return {k: before[k] for k in NO_OP_METRICS}


def measure_no_op(plan: Plan, no_op: NoOp, rows: Retain, *, store: ModelStore, ds: Dataset, device: torch.device,
                  vault: Vault) -> dict | None:
    """The parent's metrics on the plan's forget set before any method runs (what
    ``measure`` reports as ``no_op``, on the parent's retain sample less the rows
    removed); None without forget rows or a test split."""
    forget, test = _forget_rows(plan, store, vault), ds.load_test()
    if forget is None or not len(forget[1]) or test is None:
        return None
    present = trained_classes(ds)
    return _no_op_metrics(no_op, forget, rows.y, test[1].astype(np.int64), present, ds, device)

