"""Approximate deletions through the API (in-process worker): metrics, gate, fallback."""
from __future__ import annotations

import numpy as np
import pytest

from tests.service_helpers import A, C, an_owner, change_settings

VERIFICATION = ("ua", "ra", "ta", "mia_efficacy", "mia_heldout", "loss_auc", "expected_ua", "l2_to_parent", "rte_seconds")



def _gate(client, ua: float, mia: float, ta_drop: float, beat_no_op: bool = False) -> None:
    change_settings(client, gate_ua_tolerance=ua, gate_mia_tolerance=mia, gate_max_ta_drop=ta_drop,
                    gate_beat_no_op=beat_no_op)


def _delete(client, method: str, owner: str | None = None) -> dict:
    from tests.service_helpers import run_worker_inline

    owner = owner or an_owner(client)
    r = client.post("/v1/deletion-requests", json={"owner_id": owner, "method": method}, headers=C)
    assert r.status_code == 202, r.text
    run_worker_inline(client.app_)
    return client.get(f"/v1/deletion-requests/{r.json()['id']}", headers=C).json()


def _audit(client, request_id: str) -> list[dict]:
    return client.get(f"/v1/audit?request_id={request_id}&limit=200", headers=A).json()["events"]


def test_every_version_carries_verification_metrics(ready):
    trained = ready.get("/v1/models/m/versions/1", headers=C).json()["metrics"]
    assert trained["ua"] is None and trained["ra"] > 0.5 and trained["ta"] > 0.5  # nothing forgotten yet
    req = _delete(ready, "exact")
    assert req["status"] == "completed"
    v = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert v["method"] == "exact" and v["exact"] is True
    for key in VERIFICATION:
        assert v["metrics"][key] is not None, key
    assert v["metrics"]["forget_size"] > 0
    assert req["outcomes"][0]["metrics"]["ua"] == v["metrics"]["ua"]


def test_approximate_version_is_published_when_it_passes_the_gate(ready):
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    req = _delete(ready, "ssd")
    assert req["status"] == "completed" and req["method"] == "ssd"
    v = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert v["method"] == "ssd" and v["exact"] is False and v["method_config"]["alpha"] == 10.0
    touched = [c for c in v["constituents"] if c["status"] == "approximate"]
    assert len(touched) == 1 and touched[0]["tainted_from_slice"] is not None
    assert v["metrics"]["gate"]["passed"] is True and v["metrics"]["l2_to_parent"] > 0
    attempts = [e for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]
    assert len(attempts) == 1 and attempts[0]["data"]["passed"] is True
    assert attempts[0]["data"]["metrics"]["ua"] == v["metrics"]["ua"]


def test_gate_falls_back_to_exact_when_thresholds_are_impossible(ready):
    _gate(ready, ua=-1.0, mia=-1.0, ta_drop=-1.0)
    req = _delete(ready, "auto")
    assert req["status"] == "completed"
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["version"] == 2 and v["method"] == "exact" and v["exact"] is True  # never the failed candidate
    assert set(v["metrics"]["fallback_gap"]) >= {"ua", "ra", "ta", "mia_efficacy", "avg_gap"}
    kinds = [e["kind"] for e in _audit(ready, req["id"])]
    assert kinds.index("unlearning.attempt") < kinds.index("request.model_unlearned")
    attempts = [e for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]
    # auto tried every candidate, cheapest first, before retraining
    assert [a["data"]["method"] for a in attempts] == ready.app_.state.settings.auto_methods
    for attempt in attempts:
        assert attempt["data"]["passed"] is False
        assert attempt["data"]["failures"] and attempt["data"]["metrics"]["ua"] is not None
    assert [t["method"] for t in v["metrics"]["auto_tried"]] == ready.app_.state.settings.auto_methods
    assert v["metrics"]["auto_tried"][0]["failures"] == attempts[0]["data"]["failures"]
    done = next(e for e in _audit(ready, req["id"]) if e["kind"] == "request.model_unlearned")
    assert done["data"]["metrics"]["ua"] == v["metrics"]["ua"]  # the exact attempt's numbers


def test_auto_publishes_the_first_candidate_that_passes_the_gate(ready, monkeypatch):
    """``auto`` is a policy: the candidates run cheapest first, and the first one the gate
    passes is published, with what was tried before it in its metrics."""
    from workers.engine import gate

    real = gate.check

    def ft_fails(metrics, parent_ta, thresholds, *, method=None):
        return ["ua: made to fail for the test"] if method == "ft" else real(metrics, parent_ta, thresholds,
                                                                            method=method)

    monkeypatch.setattr(gate, "check", ft_fails)
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    change_settings(ready, auto_methods=["ft", "ssd", "ga"])
    req = _delete(ready, "auto")
    assert req["status"] == "completed"
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["version"] == 2 and v["method"] == "ssd" and v["exact"] is False
    assert v["metrics"]["auto_tried"] == [{"method": "ft", "failures": ["ua: made to fail for the test"]}]
    attempts = [(e["data"]["method"], e["data"]["passed"]) for e in _audit(ready, req["id"])
                if e["kind"] == "unlearning.attempt"]
    assert attempts == [("ft", False), ("ssd", True)]  # ga never ran


def test_a_candidate_no_nearer_a_retrain_than_doing_nothing_fails_the_gate(ready, monkeypatch):
    """A method that leaves the model as it was passes wide tolerances but not the no-op
    check: its estimated Avg Gap is doing nothing's, measured on the same rows."""
    from workers.engine import unlearning

    monkeypatch.setattr(unlearning.METHODS.get("ft"), "unlearn", lambda model, *a, **k: model)
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0, beat_no_op=True)
    req = _delete(ready, "ft")
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert req["status"] == "completed" and v["method"] == "exact"
    (attempt,) = [e["data"] for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]
    m = attempt["metrics"]
    for key in ("ua", "ra", "ta", "mia_efficacy", "mia_heldout", "expected_ua"):
        assert m["no_op"][key] == pytest.approx(m[key], abs=1e-6), key  # the parent, measured alike
    assert attempt["passed"] is False
    assert len(attempt["failures"]) == 1 and "not below doing nothing" in attempt["failures"][0]


def test_the_gate_records_both_estimated_gaps(ready):
    """With every tolerance open, the no-op check alone decides: GA passes exactly when its
    estimated Avg Gap is below doing nothing's, and both are recorded."""
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0, beat_no_op=True)
    req = _delete(ready, "ga")
    attempt = next(e["data"] for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt")
    g = attempt["metrics"]["gate"]
    assert g["estimated_gap"] is not None and g["no_op_estimated_gap"] is not None
    assert attempt["passed"] is g["passed"] is (g["estimated_gap"] < g["no_op_estimated_gap"])
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["method"] == ("ga" if g["passed"] else "exact")


@pytest.mark.parametrize("margin,skips", [(1000.0, True), (0.0, False)])
def test_auto_retrains_exactly_without_trying_when_doing_nothing_is_within_the_margin(ready, monkeypatch, margin,
                                                                                    skips):
    """Before any method runs, the parent is measured on the forget set: when its
    estimated gap is within the no-op margin, no candidate could pass, and auto goes
    straight to exact (saying why); otherwise it tries the candidates."""
    from workers.engine import gate

    monkeypatch.setattr(gate, "no_op_margin", lambda n: margin)
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0, beat_no_op=True)
    req = _delete(ready, "auto")
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    attempts = [e for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]
    assert req["status"] == "completed"
    if skips:
        assert v["method"] == "exact" and not attempts
        assert "no method could pass" in v["metrics"]["auto_skipped"]
    else:
        assert attempts and "auto_skipped" not in v["metrics"]


def test_a_failing_check_before_trying_is_only_a_missed_shortcut(ready, monkeypatch):
    from workers.engine.engine import Engine

    def broken(self, plan):
        raise RuntimeError("the parent could not be measured")

    monkeypatch.setattr(Engine, "no_op", broken)
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0, beat_no_op=True)
    req = _delete(ready, "auto")
    assert req["status"] == "completed"
    assert [e for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]  # the methods were tried


def test_the_parent_measured_before_a_method_runs_matches_the_gates_measure(ready):
    """``Engine.no_op`` (before the method) and the candidate's ``no_op`` (after it) see
    the same forget set, test split and parent outputs."""
    from app.engine import build_engine

    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    engine = build_engine(ready.app_.state.settings)
    owner = an_owner(ready)
    plan = engine.plan_unlearn("m", [owner], mode="approximate", method="ssd")
    before = engine.no_op(plan)
    record = engine.candidate(plan, {s: engine.run_shard(plan, s) for s in plan.to_run})
    after = record["metrics"]["no_op"]
    for key in ("ua", "ta", "expected_ua"):
        assert before[key] == pytest.approx(after[key], abs=1e-6), key
    assert abs(before["ra"] - after["ra"]) < 0.01  # the retain sample differs by the rows replaced


def test_a_named_method_that_fails_the_gate_goes_straight_to_exact(ready):
    _gate(ready, ua=-1.0, mia=-1.0, ta_drop=-1.0)
    req = _delete(ready, "ssd")
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert req["status"] == "completed" and v["method"] == "exact" and "auto_tried" not in v["metrics"]
    attempts = [e["data"]["method"] for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.attempt"]
    assert attempts == ["ssd"]


def test_auto_candidates_put_the_linear_kinds_own_method_first():
    from app.jobs.flow import auto_candidates, check_settings
    from tests.service_helpers import make_settings

    settings = make_settings("/tmp/unused", auto_methods="ft, ga")
    assert settings.auto_methods == ["ft", "ga"]
    assert auto_candidates(settings, {"kind": "sisa"}) == ["ft", "ga"]
    assert auto_candidates(settings, {"kind": "linear"}) == ["certified", "ft", "ga"]
    assert auto_candidates(settings, {"kind": "linear", "trainer": "gd"}) == ["deltagrad", "ft", "ga"]
    assert make_settings("/tmp/unused", auto_method="ssd").auto_methods == ["ssd"]  # the setting it replaced
    with pytest.raises(ValueError, match="LETHE_AUTO_METHODS"):
        check_settings(make_settings("/tmp/unused", auto_methods="ft,certified"))


def test_exact_pass_after_an_approximate_one_retrains_from_the_tainted_slice(ready):
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=40", headers=A).json()["owners"]]
    _delete(ready, "ft", owners[0])
    tainted = {c["shard"]: c["tainted_from_slice"] for c in
               ready.get("/v1/models/m/versions/2", headers=C).json()["constituents"] if c["tainted_from_slice"] is not None}
    assert tainted
    _delete(ready, "exact", owners[1])
    v3 = ready.get("/v1/models/m/versions/3", headers=C).json()
    assert v3["exact"] is True and all(c["tainted_from_slice"] is None for c in v3["constituents"])
    for shard, r in tainted.items():
        c = v3["constituents"][shard]
        assert c["status"] == "retrained" and c["retrained_from_slice"] <= r


def test_the_sealed_forget_rows_go_when_the_request_ends(ready):
    _gate(ready, ua=-1.0, mia=-1.0, ta_drop=-1.0)
    _delete(ready, "rl")
    evidence = ready.app_.state.settings.data_dir / "evidence"
    assert not evidence.exists() or not any(evidence.iterdir())


@pytest.mark.parametrize("method", ["nope", "approximate", ""])
def test_unknown_method_is_422(ready, method):
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "method": method}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_spot_check_records_the_gap_to_an_exact_reference(ready):
    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    change_settings(ready, spot_check_rate=1.0)
    req = _delete(ready, "ssd")
    assert req["status"] == "completed"
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["version"] == 2 and v["method"] == "ssd"  # the reference is never published
    (check,) = [e for e in _audit(ready, req["id"]) if e["kind"] == "unlearning.spot_check"]
    gap = check["data"]["gap_to_exact"]
    assert gap["avg_gap"] is not None and gap["kl_forget"] >= 0 and gap["ua"] >= 0
    assert req["outcomes"][0]["metrics"]["spot_check"] == gap


def test_a_reused_unlearned_constituent_keeps_serving_its_unlearned_weights(ready):
    """Two approximate passes on different shards: the first pass's unlearned weights are
    what the second version serves for that shard, not the checkpoint they came from."""
    from app.engine import build_engine

    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    engine = build_engine(ready.app_.state.settings)
    first = an_owner(ready)
    _delete(ready, "ssd", first)
    v2 = engine.version("m", 2)
    (touched,) = [c["shard"] for c in v2["constituents"] if c["status"] == "approximate"]
    slices = engine.slice_ids(v2)
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=100", headers=A).json()["owners"]]
    ds = engine.dataset("digits")
    other = next(o for o in owners if np.isin(ds.owner_sample_ids(o), np.concatenate(slices[1 - touched])).all())
    assert _delete(ready, "ssd", other)["status"] == "completed"
    v3 = ready.get("/v1/models/m/versions/3", headers=C).json()
    kept = v3["constituents"][touched]
    assert kept["status"] == "reused" and kept["weights_sha256"] == v2["constituents"][touched]["weights"]
    assert kept["weights_sha256"] != v2["constituents"][touched]["slices"][-1]["checkpoint"]
    assert engine.verify("m", 3)["ok"] is True


def test_a_job_that_fails_after_publishing_completes_with_what_it_published(ready, monkeypatch):
    """The spot check's reference shard fails after the approximate version was published:
    the version stands, the request completes on it, and its parent is revoked."""
    from workers.engine.engine import Engine

    _gate(ready, ua=1.0, mia=1.0, ta_drop=1.0)
    change_settings(ready, spot_check_rate=1.0)
    real, calls = Engine.run_shard, []

    def reference_fails(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:  # the first run is the approximate shard; then the reference's
            raise MemoryError("out of memory on the reference retrain")
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "run_shard", reference_fails)
    req = _delete(ready, "ssd")
    assert req["status"] == "completed" and req["outcomes"][0]["version"] == 2
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["status"] == "revoked"
    assert ready.get("/v1/models/m/versions/2", headers=C).json()["method"] == "ssd"
