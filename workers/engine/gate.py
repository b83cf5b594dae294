"""The verify-then-publish gate for approximately unlearned versions.

An approximate method's effect is measured, not assumed: the candidate version passes
only if the forget set looks to it like data it never saw (UA and MIA-efficacy close to
what it shows on held-out data), it did not lose more than a bound of test accuracy, and
it is nearer an exact retrain than doing nothing: its estimated Avg Gap from a retrain
is below the parent's, measured on the same rows, by more than one forget row's worth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    ua_tolerance: float = 0.03
    mia_tolerance: float = 0.05
    max_ta_drop: float = 0.02
    beat_no_op: bool = True  # the candidate must be nearer a retrain than its parent unchanged


def estimated_gap(m: dict, parent: dict) -> float | None:
    """Avg Gap from an exact retrain (percentage points), estimated without one: the mean
    of |UA - the UA a model that never saw the forget set is expected to show|,
    |MIA-efficacy - its value on held-out rows|, and the change of RA and TA from the
    parent's (a retrain's are taken to be the parent's). ``parent``: the parent's metrics
    on the same rows (``no_op``); ``estimated_gap(no_op, no_op)`` is doing nothing's."""
    terms = [(m.get("ua"), m.get("expected_ua")), (m.get("mia_efficacy"), m.get("mia_heldout")),
             (m.get("ra"), parent.get("ra")), (m.get("ta"), parent.get("ta"))]
    if any(a is None or b is None for a, b in terms):
        return None
    return round(100 * sum(abs(a - b) for a, b in terms) / len(terms), 4)


def estimates(metrics: dict) -> dict:
    """The candidate's and doing nothing's estimated Avg Gap (None without a ``no_op``)."""
    no_op = metrics.get("no_op")
    if not no_op:
        return {"estimated_gap": None, "no_op_estimated_gap": None}
    return {"estimated_gap": estimated_gap(metrics, no_op), "no_op_estimated_gap": estimated_gap(no_op, no_op)}


def _two_se(p: float, n: int) -> float:
    """Two standard errors of a proportion measured on n rows (never zero for small n)."""
    return 2 * math.sqrt((p * (1 - p) + 0.25 / n) / n)


def check(metrics: dict, parent_test_accuracy: float | None, t: Thresholds, *, method: str | None = None
          ) -> list[str]:
    """Reasons the candidate fails the gate; an empty list passes. A ``certified``
    removal is accepted on its bound (UA and MIA are still measured and reported)."""
    if method == "certified":
        return _check_certificate(metrics.get("certified"))
    failures = []
    n = metrics.get("forget_size") or 0
    ua, expected = metrics.get("ua"), metrics.get("expected_ua")
    if not n or ua is None or expected is None:
        return ["no forget set or no test split to verify against"]
    tol = t.ua_tolerance + _two_se(expected, n)
    if abs(ua - expected) > tol:
        failures.append(f"UA {ua:.4f} is not within {tol:.4f} of {expected:.4f}, the UA a model that never saw "
                        "the forget set is expected to show")
    mia, heldout = metrics.get("mia_efficacy"), metrics.get("mia_heldout")
    if mia is None or heldout is None:
        failures.append("MIA-efficacy could not be measured")
    else:
        tol = t.mia_tolerance + _two_se(heldout, n)
        if abs(mia - heldout) > tol:
            failures.append(f"MIA-efficacy {mia:.4f} on the forget set is not within {tol:.4f} of "
                            f"{heldout:.4f} on held-out data")
    ta = metrics.get("ta")
    if parent_test_accuracy is not None and ta is not None and parent_test_accuracy - ta > t.max_ta_drop:
        failures.append(f"test accuracy fell from {parent_test_accuracy:.4f} to {ta:.4f}, "
                        f"more than {t.max_ta_drop:.4f}")
    mine, before = estimates(metrics).values()
    if t.beat_no_op and mine is not None and before is not None and mine >= before - no_op_margin(n):
        failures.append(f"the estimated Avg Gap from a retrain, {mine:.2f} points, is not below doing "
                        f"nothing's {before:.2f} (the parent unchanged, measured on the same rows) by more "
                        f"than {no_op_margin(n):.2f}, what one forget row moves in UA and MIA-efficacy")
    return failures


def no_op_margin(forget_size: int) -> float:
    """How much a candidate's estimated Avg Gap must beat doing nothing's by: the change
    of one forget row in UA and in MIA-efficacy, on the Avg Gap's scale (50/n points).
    Less than that is a row's noise, not evidence; on a few rows it is a lot, and such
    deletions go to exact retraining, where the metrics could not tell anyway."""
    return 50.0 / forget_size


def _check_certificate(cert: dict | None) -> list[str]:
    """A certified removal passes while its accumulated residual bound is within the
    (epsilon, delta) budget, or when the head was retrained from scratch (exact)."""
    if cert is None:
        return ["no certificate: certified removal runs on linear models only"]
    if cert["retrained"] or cert["certified"]:
        return []
    return [f"the residual bound {cert['residual_bound']:.6g} exceeds the budget {cert['budget']:.6g}"]
