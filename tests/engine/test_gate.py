"""The gate's rules on metric records (no model needed)."""
from __future__ import annotations

import pytest

from workers.engine import gate

PARENT = {"ua": 0.02, "expected_ua": 0.10, "mia_efficacy": 0.05, "mia_heldout": 0.15, "ra": 0.99, "ta": 0.90}


def candidate(**changes) -> dict:
    return {**PARENT, "forget_size": 400, "no_op": dict(PARENT), **changes}


def test_doing_nothings_estimated_gap_counts_only_forgetting():
    # |0.02 - 0.10| and |0.05 - 0.15|, RA and TA unchanged: (8 + 10 + 0 + 0) / 4 points
    assert gate.estimated_gap(PARENT, PARENT) == pytest.approx(4.5)


def test_the_estimated_gap_charges_lost_accuracy():
    m = candidate(ua=0.10, mia_efficacy=0.15, ra=0.97, ta=0.89)
    assert gate.estimated_gap(m, PARENT) == pytest.approx((0 + 0 + 2 + 1) / 4)


def test_a_candidate_equal_to_its_parent_fails_only_the_no_op_check():
    loose = gate.Thresholds(ua_tolerance=1.0, mia_tolerance=1.0, max_ta_drop=1.0)
    (failure,) = gate.check(candidate(), 0.90, loose)
    assert "not below doing nothing's 4.50" in failure
    assert gate.check(candidate(), 0.90, gate.Thresholds(1.0, 1.0, 1.0, beat_no_op=False)) == []


def test_a_candidate_nearer_a_retrain_passes_and_one_further_fails():
    loose = gate.Thresholds(ua_tolerance=1.0, mia_tolerance=1.0, max_ta_drop=1.0)
    assert gate.check(candidate(ua=0.09, mia_efficacy=0.14, ta=0.895), 0.90, loose) == []
    # forgets as well, but pays 20 points of RA for it: worse than doing nothing
    assert gate.check(candidate(ua=0.10, mia_efficacy=0.15, ra=0.79), 0.90, loose)


def test_without_the_parents_metrics_there_is_nothing_to_compare():
    m = candidate()
    del m["no_op"]
    assert gate.estimates(m) == {"estimated_gap": None, "no_op_estimated_gap": None}
    assert gate.check(m, 0.90, gate.Thresholds(1.0, 1.0, 1.0)) == []
