"""Verification metrics for a model version (seeds 002/003; the SalUn evaluation protocol).

All take class probabilities, so they apply alike to one network and to a SISA ensemble.
Accuracies and MIA are fractions in [0, 1]; the gaps to a reference are in percentage
points, as the SalUn paper's tables are.

- UA: 1 - accuracy on the forget set.  RA: accuracy on (a sample of) the retain set.
  TA: accuracy on the test set.
- MIA-efficacy: an SVC on the true-class confidence is fitted to tell retain (member)
  from test (non-member) outputs, then applied to the forget set; the efficacy is the
  fraction of the forget set it calls non-member. ``mia_heldout`` is the same classifier
  applied to test rows it was not fitted on: what a model that never saw the forget set
  would show.
- loss_auc: AUC of a loss-threshold attack (lower loss -> member) separating the forget
  set from held-out test rows; 0.5 means the forget set looks unseen.
- l2_to_parent: L2 distance of all weights to the parent version's.
- kl_forget: mean KL(reference || model) of the output distributions on the forget set,
  against a model retrained without it (one reference model, so a point estimate of the
  seeds' KLoM, on probabilities rather than margins).
"""
from __future__ import annotations

import math

import numpy as np
import torch

MIA_ROWS = 2000  # per side of the membership classifier's training set
GAP_KEYS = ("ua", "ra", "ta", "mia_efficacy")


def accuracy(probs: np.ndarray, y: np.ndarray) -> float | None:
    return float((probs.argmax(1) == y).mean()) if len(y) else None


def _confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(y)), y].reshape(-1, 1)


def _loss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))


def _split_test(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Test rows for fitting the attack and held-out test rows for judging it (disjoint halves)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def mia(retain: tuple, test: tuple, forget: tuple, *, seed: int = 0) -> dict:
    """SVC membership attack fitted on retain vs test; efficacy on forget and held-out test."""
    (pr, yr), (pt, yt), (pf, yf) = retain, test, forget
    fit_rows, held_rows = _split_test(len(yt), seed)
    rng = np.random.default_rng(seed)
    n = min(MIA_ROWS, len(yr), len(fit_rows))
    if n < 2:
        return {"mia_efficacy": None, "mia_heldout": None}
    member = rng.choice(len(yr), n, replace=False)
    outsider = rng.choice(fit_rows, n, replace=False)
    features = np.concatenate([_confidence(pr[member], yr[member]), _confidence(pt[outsider], yt[outsider])])
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    if np.ptp(features) == 0:
        # Every output looks alike: the attack has nothing to go on and calls all members.
        return {"mia_efficacy": 0.0 if len(yf) else None, "mia_heldout": 0.0}
    from sklearn.svm import SVC  # imported when measured: ~50 MiB a worker need not hold before

    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)

    def efficacy(p, y):
        return float((svc_predict(clf, _confidence(p, y)) == 0).mean()) if len(y) else None

    return {"mia_efficacy": efficacy(pf, yf), "mia_heldout": efficacy(pt[held_rows], yt[held_rows])}


def svc_predict(clf, x: np.ndarray, block: int = 1024) -> np.ndarray:
    """``clf.predict(x)`` for a binary RBF SVC, as one matrix product per block of rows
    (1.5x faster than libsvm's loop over ~4,000 support vectors)."""
    sv, coef, gamma = clf.support_vectors_, clf.dual_coef_[0], clf._gamma
    decision = np.empty(len(x))
    for i in range(0, len(x), block):
        d2 = ((x[i:i + block, None, :] - sv[None, :, :]) ** 2).sum(-1)
        decision[i:i + block] = np.exp(-gamma * d2) @ coef
    return np.where(decision + clf.intercept_[0] > 0, clf.classes_[1], clf.classes_[0])


def loss_auc(forget: tuple, test: tuple, *, seed: int = 0) -> float | None:
    """AUC of a loss-threshold attack: forget rows (members?) against held-out test rows."""
    (pf, yf), (pt, yt) = forget, test
    _, held_rows = _split_test(len(yt), seed)
    if not len(yf) or not len(held_rows):
        return None
    scores = np.concatenate([-_loss(pf, yf), -_loss(pt[held_rows], yt[held_rows])])
    labels = np.concatenate([np.ones(len(yf)), np.zeros(len(held_rows))])
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def l2_distance(weights: list[dict], parent: list[dict]) -> float:
    """L2 distance between two lists of state dicts (constituents), over float tensors."""
    total = 0.0
    for a, b in zip(weights, parent):
        for k, t in a.items():
            if torch.is_floating_point(t):
                total += float(((t.float() - b[k].float()) ** 2).sum())
    return math.sqrt(total)


def kl_divergence(reference: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean KL(reference || probs) over rows."""
    if not len(reference):
        return None
    p = np.clip(reference.astype(np.float64), 1e-12, None)
    q = np.clip(probs.astype(np.float64), 1e-12, None)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def evaluate(*, forget: tuple | None, retain: tuple, test: tuple | None, seed: int = 0) -> dict:
    """UA, RA, TA, MIA-efficacy (and on held-out), loss AUC from (probs, labels) pairs.

    ``forget`` is None or empty for a version that forgot nothing; ``test`` is None for a
    dataset without a test split. Metrics that cannot be computed are None.
    """
    forget = forget if forget is not None else (np.zeros((0, retain[0].shape[1])), np.zeros(0, np.int64))
    out = {
        "ua": None if not len(forget[1]) else 1.0 - accuracy(*forget),
        "ra": accuracy(*retain),
        "ta": accuracy(*test) if test is not None else None,
        "mia_efficacy": None,
        "mia_heldout": None,
        "loss_auc": None,
        "forget_size": int(len(forget[1])),
        "retain_sample_size": int(len(retain[1])),
    }
    if test is not None and len(test[1]) >= 4:
        out.update(mia(retain, test, forget, seed=seed))
        out["loss_auc"] = loss_auc(forget, test, seed=seed)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def gaps(metrics: dict, reference: dict) -> dict:
    """|metric - reference| in percentage points for UA, RA, TA, MIA, and their mean (Avg Gap)."""
    out = {}
    for k in GAP_KEYS:
        a, b = metrics.get(k), reference.get(k)
        out[k] = None if a is None or b is None else round(100 * abs(a - b), 4)
    known = [v for v in out.values() if v is not None]
    out["avg_gap"] = round(sum(known) / len(known), 4) if known else None
    return out


def expected_accuracy(forget_y: np.ndarray, class_accuracy, present_classes) -> float:
    """The accuracy a model that never saw the forget set should show on it: its held-out
    accuracy per class (``class_accuracy(c)``, None without held-out rows of class c),
    weighted by the forget set's class mix, and zero for classes the model no longer
    trains on (a model never shown a class never predicts it)."""
    total = 0.0
    classes, counts = np.unique(forget_y, return_counts=True)
    for c, n in zip(classes.tolist(), counts.tolist()):
        accuracy = class_accuracy(c) if c in present_classes else None
        if accuracy is not None:
            total += n * accuracy
    return total / max(len(forget_y), 1)


def expected_ua(forget_y: np.ndarray, test: tuple, present_classes: np.ndarray) -> float | None:
    """The UA (forget-set error) a model that never saw the forget set should show."""
    if not len(forget_y):
        return None
    pt, yt = test
    right = pt.argmax(1) == yt

    def class_accuracy(c):
        return float(right[yt == c].mean()) if (yt == c).any() else None

    return round(1.0 - expected_accuracy(forget_y, class_accuracy, set(np.asarray(present_classes).tolist())), 6)
