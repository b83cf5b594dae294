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
    assert "not below doing nothing's 4.50" in failure and "by more than 0.12" in failure  # 50 / 400 rows
    assert gate.check(candidate(), 0.90, gate.Thresholds(1.0, 1.0, 1.0, beat_no_op=False)) == []


def test_a_candidate_nearer_a_retrain_passes_and_one_further_fails():
    loose = gate.Thresholds(ua_tolerance=1.0, mia_tolerance=1.0, max_ta_drop=1.0)
    assert gate.check(candidate(ua=0.09, mia_efficacy=0.14, ta=0.895), 0.90, loose) == []
    # forgets as well, but pays 20 points of RA for it: worse than doing nothing
    assert gate.check(candidate(ua=0.10, mia_efficacy=0.15, ra=0.79), 0.90, loose)


def test_beating_doing_nothing_by_less_than_a_forget_row_is_not_enough():
    loose = gate.Thresholds(ua_tolerance=1.0, mia_tolerance=1.0, max_ta_drop=1.0)
    # one row of 400 more forgotten, on UA alone: 0.25 points of UA, 0.0625 of Avg Gap
    assert gate.check(candidate(ua=0.0225), 0.90, loose)
    # one row on UA and one on MIA-efficacy: 0.125, just the margin, still not more than it
    assert gate.check(candidate(ua=0.0225, mia_efficacy=0.0525), 0.90, loose)
    assert gate.check(candidate(ua=0.025, mia_efficacy=0.055), 0.90, loose) == []  # two rows each
    assert gate.no_op_margin(10) == 5.0  # on a 10-row owner only a clear change counts


def test_without_the_parents_metrics_there_is_nothing_to_compare():
    m = candidate()
    del m["no_op"]
    assert gate.estimates(m) == {"estimated_gap": None, "no_op_estimated_gap": None}
    assert gate.check(m, 0.90, gate.Thresholds(1.0, 1.0, 1.0)) == []
