"""Clustered SISA (``strategy.partition``): owners stay whole, shards stay balanced, and
similar owners share a shard; owners with a class mix of their own (``label_alpha``)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FAST
from workers.engine import placement, planning, sisa
from workers.engine.errors import DatasetError
from workers.engine.sisa import Strategy


def _entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _cut(ds, partition: str, shards: int = 4, slices: int = 2):
    ids, codes, names = ds.owner_codes()
    order = planning.owner_order(ds, partition, ids, codes, names, shards)
    return sisa.partition_owners(ids, codes, names, shards, slices, order), dict(zip(ids.tolist(), codes.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_contiguous_groups_keep_the_order_fill_every_group_and_balance_it(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, size=50)
    order = rng.permutation(50)
    groups = placement.contiguous_groups(order, sizes, 7)
    assert len(groups) == 7 and all(len(g) for g in groups)
    assert np.array_equal(np.concatenate(groups), order)
    loads = np.array([sizes[g].sum() for g in groups])
    assert np.abs(loads - sizes.sum() / 7).max() <= sizes.max()
    with pytest.raises(ValueError):
        placement.contiguous_groups(order[:3], sizes, 4)


def test_kmeans_order_puts_each_blob_together():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-5, 1, (30, 4)), rng.normal(5, 1, (30, 4))])
    order = placement.kmeans_order(points, np.ones(60), 2)
    assert sorted(order.tolist()) == list(range(60))
    first, second = set(order[:30].tolist()), set(order[30:].tolist())
    assert first in (set(range(30)), set(range(30, 60))) and first | second == set(range(60))


def test_label_order_groups_owners_by_their_dominant_label():
    codes = np.repeat(np.arange(6), 10)
    labels = np.array([[0] * 9 + [1], [2] * 10, [0] * 10, [2] * 8 + [1] * 2, [1] * 10, [0] * 6 + [2] * 4]).ravel()
    order = placement.label_order(codes, labels, 6, 3).tolist()
    assert order == [2, 0, 5, 4, 1, 3]  # label 0 purest first, then 1, then 2


@pytest.mark.parametrize("partition", ["label", "kmeans"])
def test_clustered_shards_hold_fewer_classes_and_every_owner_whole(engine, partition):
    engine.import_dataset("digits", "digits", seed=0, label_alpha=0.1)
    ds = engine.dataset("digits")
    arrays = ds.load_arrays()
    label = dict(zip(arrays.sample_ids.tolist(), arrays.y.tolist()))

    def mean_entropy(shards):
        return np.mean([_entropy(np.array([label[i] for i in np.concatenate(s)])) for s in shards])

    balanced, owner_of = _cut(ds, "balanced")
    clustered, _ = _cut(ds, partition)
    assert mean_entropy(clustered) < mean_entropy(balanced) - 0.2
    every = np.concatenate([np.concatenate(s) for s in clustered])
    assert np.array_equal(np.sort(every), np.sort(arrays.sample_ids))  # each row once
    shard_of_owner = {}
    for shard, slices in enumerate(clustered):
        for ids in slices:
            for i in ids.tolist():
                assert shard_of_owner.setdefault(owner_of[i], shard) == shard  # owners stay whole
    sizes = np.array([sum(len(ids) for ids in s) for s in clustered])
    assert sizes.min() > 0.6 * sizes.mean()  # still balanced, if less exactly


def test_a_clustered_sisa_model_trains_and_unlearns_within_its_shards(engine):
    engine.import_dataset("digits", "digits", seed=0, label_alpha=0.1)
    v1 = engine.train("m", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 4, 2, partition="kmeans"),
                      config=FAST)
    assert v1["strategy"]["partition"] == "kmeans" and v1["metrics"]["test_accuracy"] > 0.5
    owner = engine.dataset("digits").owners(limit=1)[0][0]
    v2 = engine.unlearn("m", [owner])
    retrained = [c for c in v2["constituents"] if c["status"] == "retrained"]
    assert len(retrained) == 1  # the owner lived in one shard


def test_partition_is_checked_and_kept_out_of_records_that_do_not_use_it():
    assert "partition" not in Strategy("sisa", 4, 2).to_dict()
    assert Strategy("sisa", 4, 2, partition="label").to_dict()["partition"] == "label"
    with pytest.raises(ValueError, match="partition must be one of"):
        Strategy("sisa", 4, 2, partition="nope")
    with pytest.raises(ValueError, match="sisa kind only"):
        Strategy("monolithic", partition="kmeans")


def test_label_skewed_owners_hold_few_classes_and_are_reproducible(engine):
    from workers.engine.sources import assign_owners

    labels = np.repeat(np.arange(10), 200)
    mixed = assign_owners(2000, seed=3, n_owners=100, labels=labels)
    skewed = assign_owners(2000, seed=3, n_owners=100, labels=labels, label_alpha=0.05)
    assert np.array_equal(skewed, assign_owners(2000, seed=3, n_owners=100, labels=labels, label_alpha=0.05))

    def mean_owner_entropy(owners):
        return np.mean([_entropy(labels[owners == o]) for o in np.unique(owners)])

    assert mean_owner_entropy(skewed) < 0.5 * mean_owner_entropy(mixed)
    with pytest.raises(DatasetError, match="label_alpha must be > 0"):
        assign_owners(2000, seed=3, labels=labels, label_alpha=0.0)
    info = engine.import_dataset("d", "digits", seed=0, label_alpha=0.5)
    assert info.source["owners"]["label_alpha"] == 0.5


def test_every_shard_gets_an_owner_for_each_of_its_slices():
    """Owners of sizes 10,10,10,10,30,30 in 2 shards x 3 slices: cut by sample count alone
    the second shard would hold two owners, and one of its slices none."""
    sizes = np.array([10, 10, 10, 10, 30, 30])
    groups = placement.contiguous_groups(np.arange(6), sizes, 2, min_owners=3)
    assert [len(g) for g in groups] == [3, 3]
    ids = np.arange(100)
    codes = np.repeat(np.arange(6), sizes).astype(np.int32)
    cut = sisa.partition_owners(ids, codes, [f"o{i}" for i in range(6)], 2, 3, order=np.arange(6))
    assert all(len(s) > 0 for shard in cut for s in shard)
    with pytest.raises(ValueError, match="at least 3"):
        placement.contiguous_groups(np.arange(5), sizes, 2, min_owners=3)


def test_the_embedding_is_each_owners_mean_row_projected():
    rng = np.random.default_rng(0)
    x = rng.random((50, 6)).astype(np.float32)
    codes = rng.integers(0, 7, 50)
    counts = np.bincount(codes, minlength=8)  # owner 7 holds nothing
    ids = np.arange(50)
    blocks = [(ids[:20], x[:20]), (ids[20:], x[20:])]
    got = placement.owner_embedding(blocks, lambda i: codes[i], counts, 6, dims=4, seed=1)
    proj = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32) / 2
    for o in range(7):
        assert np.allclose(got[o], (x[codes == o] @ proj).mean(0), atol=1e-5)
    assert np.all(got[7] == 0)


def _dense_label_order(codes, labels, n_owners, num_classes):
    """The owners x classes table the sparse label_order avoids, as a reference."""
    hist = np.bincount(codes.astype(np.int64) * num_classes + labels, minlength=n_owners * num_classes)
    hist = hist.reshape(n_owners, num_classes).astype(np.float64)
    dominant = hist.argmax(1)
    rest = hist.copy()
    rest[np.arange(n_owners), dominant] = -1
    runner_up = np.where(rest.max(1) > 0, rest.argmax(1), -1)
    purity = hist.max(1) / np.maximum(hist.sum(1), 1)
    return np.lexsort((np.arange(n_owners), -purity, runner_up, dominant))


def test_label_order_from_pairs_matches_the_full_table():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_owners, classes = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        n = int(rng.integers(n_owners, 400))
        codes = np.concatenate([np.arange(n_owners), rng.integers(0, n_owners, n - n_owners)]).astype(np.int32)
        labels = rng.integers(0, classes, n).astype(np.int32)
        assert np.array_equal(placement.label_order(codes, labels, n_owners, classes),
                              _dense_label_order(codes, labels, n_owners, classes))


def test_held_out_takes_whole_owners_up_to_the_share_and_never_every_owner():
    codes = np.repeat(np.arange(50), np.arange(1, 51))  # owner i holds i + 1 rows: 1,275 rows
    held = placement.held_out(codes, 50, 0.2, seed=3)
    rows = np.isin(codes, held).sum()
    assert 0 < rows <= 0.2 * len(codes) and rows >= 0.2 * len(codes) - 50  # whole owners, near the share
    assert np.array_equal(held, placement.held_out(codes, 50, 0.2, seed=3))  # the same ledger, the same owners
    assert not np.array_equal(held, placement.held_out(codes, 50, 0.2, seed=4))
    assert len(placement.held_out(codes, 50, 0.0, seed=3)) == 0
    assert len(placement.held_out(np.zeros(10, dtype=np.int64), 1, 0.4, seed=0)) == 0  # one owner: it trains
    small = np.repeat(np.arange(300), 5)  # 1,500 rows: 2% is 30, the floor makes it 100
    assert np.isin(small, placement.held_out(small, 300, 0.02, seed=0)).sum() == placement.HOLDOUT_MIN_ROWS
    tiny = np.repeat(np.arange(60), 5)  # 300 rows: no more than a tenth
    assert np.isin(tiny, placement.held_out(tiny, 60, 0.02, seed=0)).sum() == 30
    big = np.array([0] * 900 + [1] * 100)
    assert list(placement.held_out(big, 2, 0.2, seed=0)) == [1]  # the large owner is passed over


def test_a_strategy_holds_out_rows_on_one_shard_by_default():
    from workers.engine.sisa import DEFAULT_HOLDOUT, Strategy

    assert Strategy("monolithic").holdout == DEFAULT_HOLDOUT == Strategy("sisa").holdout
    assert Strategy("monolithic").to_dict()["holdout"] == DEFAULT_HOLDOUT
    assert Strategy("sisa", shards=4).holdout == 0 and "holdout" not in Strategy("sisa", shards=4).to_dict()
    assert Strategy("linear").holdout == 0 and Strategy("gd").holdout == 0
    assert "holdout" not in Strategy("monolithic", holdout=0.0).to_dict()
    for bad in (dict(kind="monolithic", holdout=0.5), dict(kind="sisa", holdout=-0.1), dict(kind="linear", holdout=0.1)):
        with pytest.raises(ValueError, match="holdout"):
            Strategy(**bad)
