"""SISA training and exact unlearning on digits."""
import numpy as np
import pytest

from tests.conftest import FAST
from workers.engine.digests import ids_digest, sha256_bytes
from workers.engine.errors import ModelError, ModelNotFound, OwnerNotFound
from workers.engine.sisa import Strategy


def _weights(v):
    return [c["weights"] for c in v["constituents"]]


def _owner_in_last_slice(engine, model="m"):
    """An owner whose samples all sit in the last slice of their shard."""
    v = engine.version(model)
    slices = engine.slice_ids(v)
    owner_of = engine.dataset(v["dataset"]).owner_map()
    last = slices[1][-1]
    return owner_of[int(last[0])]


@pytest.fixture
def sisa_engine(digits_engine):
    digits_engine.train("m", dataset="digits", architecture="cnn", strategy=Strategy("sisa", 4, 2), config=FAST)
    return digits_engine


def test_each_owner_lives_in_one_shard_and_one_slice(trained):
    v = trained.version("m")
    owner_of = trained.dataset("digits").owner_map()
    place = {}
    for shard, slices in enumerate(trained.slice_ids(v)):
        for r, ids in enumerate(slices):
            for i in ids.tolist():
                assert place.setdefault(owner_of[i], (shard, r)) == (shard, r)
    sizes = [c["n_samples"] for c in v["constituents"]]
    assert max(sizes) - min(sizes) <= 0.05 * max(sizes)  # balanced shards


def test_unlearning_one_owner_retrains_only_its_shard(sisa_engine):
    v1 = sisa_engine.version("m")
    owner = _owner_in_last_slice(sisa_engine)
    v2 = sisa_engine.unlearn("m", [owner], requests=["req-1"])
    changed = [i for i, (a, b) in enumerate(zip(_weights(v1), _weights(v2))) if a != b]
    assert changed == [1]
    assert v2["metrics"]["retrained_shards"] == [1]
    assert v2["metrics"]["reused_shards"] == [0, 2, 3]
    assert v2["constituents"][1]["retrained_from_slice"] == 1
    # The checkpoint before the touched slice is reused, the one after it is new.
    old, new = v1["constituents"][1]["slices"], v2["constituents"][1]["slices"]
    assert new[0]["checkpoint"] == old[0]["checkpoint"]
    assert new[1]["checkpoint"] != old[1]["checkpoint"]
    assert v2["parent"] == v1["version"] and v2["version"] == v1["version"] + 1
    assert v2["removed"]["owners"][0]["owner_id"] == owner
    assert v2["removed"]["requests"] == ["req-1"]


def test_untouched_constituents_are_bit_identical(sisa_engine):
    v1 = sisa_engine.version("m")
    v2 = sisa_engine.unlearn("m", [_owner_in_last_slice(sisa_engine)])
    for shard in v2["metrics"]["reused_shards"]:
        for a, b in zip(v1["constituents"][shard]["slices"], v2["constituents"][shard]["slices"]):
            assert sisa_engine.store.get_blob(a["checkpoint"]) == sisa_engine.store.get_blob(b["checkpoint"])


def test_new_manifest_excludes_every_erased_sample_and_keeps_every_other(sisa_engine):
    ds = sisa_engine.dataset("digits")
    owners = [o for o, _ in ds.owners(limit=3)]
    erased = np.concatenate([ds.owner_sample_ids(o) for o in owners])
    v1 = sisa_engine.version("m")
    v2 = sisa_engine.unlearn("m", owners)
    trained_on = np.concatenate([np.concatenate(s) for s in sisa_engine.slice_ids(v2)])
    assert not np.isin(erased, trained_on).any()
    assert set(trained_on.tolist()) == set(ds.load_arrays().sample_ids.tolist())
    before = np.concatenate([np.concatenate(s) for s in sisa_engine.slice_ids(v1)])
    assert set(trained_on.tolist()) == set(before.tolist()) - set(erased.tolist())
    # The digest in the record is the digest of those ids, so an auditor can recompute it.
    assert v2["manifest_digest"] == ids_digest(trained_on)
    assert v2["removed"]["sample_count"] == len(erased)
    assert v2["removed"]["sample_ids_digest"] == ids_digest(erased)


def test_several_owners_are_one_retraining_pass(sisa_engine):
    owners = [o for o, _ in sisa_engine.dataset("digits").owners(limit=4)]
    n_before = len(sisa_engine.store.version_numbers("m"))
    v = sisa_engine.unlearn("m", owners, requests=["a", "b"])
    assert len(sisa_engine.store.version_numbers("m")) == n_before + 1
    assert sorted(o["owner_id"] for o in v["removed"]["owners"]) == sorted(owners)


def test_sisa_unlearning_equals_a_full_retrain_bit_for_bit(sisa_engine):
    owners = [o for o, _ in sisa_engine.dataset("digits").owners(limit=2)]
    fast = sisa_engine.unlearn("m", owners)
    full = sisa_engine.retrain_full("m")
    assert full["metrics"]["retrained_shards"] == [0, 1, 2, 3]
    assert _weights(full) == _weights(fast)
    assert full["manifest_digest"] == fast["manifest_digest"]


def test_nothing_to_unlearn_publishes_nothing(sisa_engine):
    owner = sisa_engine.dataset("digits").owners(limit=1)[0][0]
    sisa_engine.unlearn("m", [owner])
    assert sisa_engine.unlearn("m", [owner]) is None


def test_erasure_made_elsewhere_is_caught_up_on_the_next_pass(sisa_engine):
    """A crash after erasure but before publish: the next pass still removes those samples."""
    ds = sisa_engine.dataset("digits")
    owner = ds.owners(limit=1)[0][0]
    ids = ds.owner_sample_ids(owner)
    ds.erase_owners([owner], reference="crashed-request")
    v = sisa_engine.unlearn("m", [])
    assert v["removed"]["sample_count"] == len(ids)
    assert v["removed"]["requests"] == ["crashed-request"]


def test_training_is_deterministic(digits_engine):
    kw = dict(dataset="digits", architecture="cnn", strategy=Strategy("sisa", 2, 2), config=FAST)
    a = digits_engine.train("a", **kw)
    b = digits_engine.train("b", **kw)
    assert _weights(a) == _weights(b)
    assert a["manifest_digest"] == b["manifest_digest"]
    c = digits_engine.train("c", **{**kw, "config": FAST.__class__(epochs=3, batch_size=64, seed=1)})
    assert _weights(c) != _weights(a)


def test_a_loaded_version_predicts_exactly_as_published(trained):
    v = trained.version("m", 1)
    x, y = trained.test_tensors(trained.dataset("digits"))
    first = trained.load("m", 1).predict_proba(x)
    again = trained.load("m", "latest").predict_proba(x)
    assert (first == again).all()
    predicted = first.argmax(1).numpy().astype("<i8")
    assert sha256_bytes(predicted.tobytes()) == v["metrics"]["test_predictions_sha256"]
    assert round(float((predicted == y.numpy()).mean()), 6) == v["metrics"]["test_accuracy"]
    assert v["metrics"]["test_accuracy"] > 0.5  # it learned: chance is 0.1


def test_vote_aggregation_returns_vote_shares(trained):
    x, _ = trained.test_tensors(trained.dataset("digits"))
    ens = trained.load("m")
    ens.aggregation = "vote"
    shares = ens.predict_proba(x[:20])
    assert ((shares * 4).round() == shares * 4).all()  # 4 constituents: shares are k/4
    assert (shares.sum(1) == 1).all()


def test_monolithic_mlp_unlearns_by_full_retrain(digits_engine):
    v1 = digits_engine.train("mono", dataset="digits", architecture="mlp", strategy=Strategy("monolithic"), config=FAST)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("mono", [owner])
    assert len(v1["constituents"]) == 1
    assert v2["constituents"][0]["status"] == "retrained"
    assert v2["constituents"][0]["retrained_from_slice"] == 0
    assert v2["n_samples"] < v1["n_samples"]


def test_resnet18_builds_for_small_images():
    import torch

    from workers.engine import nets

    net = nets.build("resnet18", [1, 8, 8], 10, seed=0)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_more_shards_than_owners_is_refused(digits_engine):
    with pytest.raises(ModelError, match="at least shards x slices"):
        digits_engine.train("big", dataset="digits", strategy=Strategy("sisa", 64, 4), config=FAST)
    assert "big" not in digits_engine.store.model_names()


def test_unknown_owner_and_unknown_model_are_refused(trained):
    with pytest.raises(OwnerNotFound):
        trained.unlearn("m", ["no-such-owner"])
    with pytest.raises(ModelNotFound):
        trained.unlearn("nope", ["owner-00001"])


def test_bad_strategy_and_architecture_are_refused(digits_engine):
    with pytest.raises(ValueError):
        Strategy("sisa", 0, 2)
    with pytest.raises(ValueError):
        Strategy("monolithic", 2, 1)
    with pytest.raises(ModelError, match="unknown architecture"):
        digits_engine.train("x", dataset="digits", architecture="vit", config=FAST)


def test_unchanged_constituents_are_stored_once(sisa_engine):
    objects = sisa_engine.data_dir / "models_store" / "objects"
    before = {p.name for p in objects.rglob("*") if p.is_file()}
    v1 = sisa_engine.version("m")
    v2 = sisa_engine.unlearn("m", [_owner_in_last_slice(sisa_engine)])
    added = {p.name for p in objects.rglob("*") if p.is_file()} - before
    # Only shard 1's retrained slice is new (checkpoint, shorter id list), its outputs, and
    # the list of removed sample ids ...
    touched = v2["constituents"][1]
    expected = {touched["slices"][1]["checkpoint"], touched["slices"][1]["sample_ids"], touched["test_probs"],
                touched["retain_probs"], v2["removed"]["sample_ids"]}
    # ... and, where removed rows were in the retain sample, the new sample and every
    # constituent's outputs on it (the reused ones' read from their stored outputs).
    assert v2["artifacts"]["retain_sample_ids"] != v1["artifacts"]["retain_sample_ids"]  # digits: every row
    expected |= {v2["artifacts"]["retain_sample_ids"]} | {c["retain_probs"] for c in v2["constituents"]}
    assert added == expected


def test_a_training_run_that_crashed_before_publishing_can_be_run_again(digits_engine, monkeypatch):
    kw = dict(dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 1), config=FAST)

    def crash(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(digits_engine.store, "publish", crash)
    with pytest.raises(RuntimeError):
        digits_engine.train("m2", **kw)
    monkeypatch.undo()
    assert digits_engine.train("m2", **kw)["version"] == 1
    with pytest.raises(ModelError, match="already exists"):
        digits_engine.train("m2", **kw)


def test_verify_recomputes_the_evidence_and_names_erased_owners(sisa_engine):
    owner = sisa_engine.dataset("digits").owners(limit=1)[0][0]
    sisa_engine.unlearn("m", [owner])
    old, new = sisa_engine.verify("m", 1), sisa_engine.verify("m", 2)
    assert old["ok"] and new["ok"]
    assert [e["owner_id"] for e in old["erased_owners_in_manifest"]] == [owner]  # trained before the erasure
    assert new["erased_owners_in_manifest"] == []


def test_verify_detects_a_tampered_sample_id_list(sisa_engine):
    v = sisa_engine.version("m")
    blob = v["constituents"][0]["slices"][0]["sample_ids"]
    path = next((sisa_engine.data_dir / "models_store" / "objects").rglob(blob))
    path.write_bytes(path.read_bytes()[8:])  # drop one sample id
    report = sisa_engine.verify("m")
    assert not report["ok"]
    assert any(blob in p for p in report["problems"])


def test_budget_slice_epochs_follow_the_sisa_papers_rule():
    from workers.engine.training import TrainConfig

    assert TrainConfig(epochs=5).step_epochs(4) == 5
    assert TrainConfig(epochs=5, slice_epochs="budget").step_epochs(4) == 2  # 2*5/(4+1)
    assert TrainConfig(epochs=1, slice_epochs="budget").step_epochs(8) == 1  # never zero
    with pytest.raises(ValueError):
        TrainConfig(slice_epochs="sometimes")


def test_a_shard_run_twice_stores_the_same_checkpoints(sisa_engine):
    """A redelivered shard task does the same work and gets the same bytes."""
    owner = sisa_engine.dataset("digits").owners(limit=1)[0][0]
    plan = sisa_engine.plan_unlearn("m", [owner], job="job-1")
    (shard,) = plan.to_run
    assert sisa_engine.run_shard(plan, shard) == sisa_engine.run_shard(plan, shard)


def test_a_job_publishes_at_most_one_version(sisa_engine):
    """finish() run again for the same job (a redelivered task) returns the version it published."""
    owner = sisa_engine.dataset("digits").owners(limit=1)[0][0]
    plan = sisa_engine.plan_unlearn("m", [owner], job="job-2")
    results = {shard: sisa_engine.run_shard(plan, shard) for shard in plan.to_run}
    first = sisa_engine.finish(plan, results)
    again = sisa_engine.finish(plan, results)
    assert again["version"] == first["version"] == 2 and again["job"] == "job-2"
    assert sisa_engine.store.version_numbers("m") == [1, 2]


def test_the_test_metrics_come_from_the_constituents_cached_outputs_unchanged(sisa_engine, monkeypatch):
    """measure() takes the test outputs the candidate aggregated from its constituents
    (cached for reused ones) instead of running the ensemble over the test split again,
    and the numbers are the ones a fresh evaluation gives."""
    from workers.engine import verification

    owner = sisa_engine.dataset("digits").owners(limit=1)[0][0]
    plan = sisa_engine.plan_unlearn("m", [owner])
    results = {s.shard: sisa_engine.run_shard(plan, s.shard) for s in plan.shards if s.runs}
    given = {}
    real = verification.measure

    def spy(*args, **kwargs):
        given["test_probs"] = kwargs.get("test_probs")
        return real(*args, **kwargs)

    monkeypatch.setattr(verification, "measure", spy)
    record = sisa_engine.candidate(plan, results)
    assert given["test_probs"] is not None
    fresh = real(plan, record, np.concatenate([np.concatenate(s) for s in sisa_engine.slice_ids(record)]),
                 store=sisa_engine.store, ds=sisa_engine.dataset("digits"), device=sisa_engine.device,
                 vault=sisa_engine.vault)
    for key in ("ta", "mia_efficacy", "mia_heldout", "loss_auc", "expected_ua", "ua", "ra"):
        assert record["metrics"][key] == fresh[key], key


def test_an_approximate_method_stops_on_rows_its_shard_never_saw_never_on_the_test_split(sisa_engine, monkeypatch):
    """The stopping rule's held-out rows are rows the constituent never trained on: other
    shards' rows, or on one shard the owners ``strategy.holdout`` kept out of training.
    Never the test split: a one-shard model that saw every row runs without one."""
    from workers.engine import approximate, checkpoints, unlearning

    seen = []
    real = unlearning.run

    def spy(name, model, forget, retain, *, heldout=None, **kwargs):
        seen.append((heldout, retain))
        return real(name, model, forget, retain, heldout=heldout, **kwargs)

    monkeypatch.setattr(approximate.unlearning, "run", spy)
    ds = sisa_engine.dataset("digits")
    owners = [o for o, _ in ds.owners(limit=3)]

    def check_unseen(heldout, retain):
        assert len(heldout) >= approximate.MIN_HELDOUT_ROWS
        mine = {r.numpy().tobytes() for r in retain.x}
        assert not any(r.numpy().tobytes() in mine for r in heldout.x)  # none of its own shard's rows

    def heldout_from(version):
        touched = next(c for c in version["constituents"] if c["status"] == "approximate")
        return checkpoints.loads(sisa_engine.store.get_blob(touched["weights"])).info["heldout"]

    v2 = sisa_engine.unlearn("m", owners[:1], mode="approximate", method="ga")
    check_unseen(*seen.pop())
    assert heldout_from(v2) == "other_shards"

    mono = sisa_engine.train("mono", dataset="digits", architecture="mlp",
                             strategy=Strategy("monolithic", holdout=0.1), config=FAST)
    trained = np.concatenate([np.concatenate(s) for s in sisa_engine.slice_ids(mono)])
    held = np.setdiff1d(ds.sample_ids(), trained)
    assert 0.05 * len(ds.sample_ids()) <= len(held) <= 0.1 * len(ds.sample_ids())
    v = sisa_engine.unlearn("mono", owners[1:2], mode="approximate", method="ga")
    heldout, retain = seen.pop()
    check_unseen(heldout, retain)
    assert heldout_from(v) == "held_out_owners"

    sisa_engine.train("all-rows", dataset="digits", architecture="mlp", strategy=Strategy("monolithic", holdout=0.0),
                      config=FAST)
    v = sisa_engine.unlearn("all-rows", owners[2:3], mode="approximate", method="ga")
    assert seen.pop()[0] is None and heldout_from(v) is None  # every row seen: no stopping rule, not the test split


def test_held_out_owners_stay_out_of_every_version_and_need_no_retraining(digits_engine):
    """Owners ``strategy.holdout`` kept out of training are in no shard of version 1 nor of
    any retrain after it; deleting one erases their rows and plans nothing."""
    engine = digits_engine
    v1 = engine.train("mono", dataset="digits", architecture="mlp", strategy=Strategy("monolithic", holdout=0.1),
                      config=FAST)
    ds = engine.dataset("digits")
    trained = np.concatenate([np.concatenate(s) for s in engine.slice_ids(v1)])
    held = [o for o, _ in ds.owners(limit=1000) if not np.isin(ds.owner_sample_ids(o), trained).any()]
    assert held
    trained_owner = next(o for o, _ in ds.owners(limit=1000) if o not in held)
    v2 = engine.unlearn("mono", [trained_owner], mode="full")
    again = np.concatenate([np.concatenate(s) for s in engine.slice_ids(v2)])
    assert not np.isin(again, [i for o in held for i in ds.owner_sample_ids(o)]).any()
    assert engine.plan_unlearn("mono", [held[0]]) is None
    assert len(ds.owner_sample_ids(held[0])) == 0  # erased all the same
