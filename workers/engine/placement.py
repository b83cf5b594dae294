"""Where owners go when SISA cuts shards: the order in which owners are laid out before
the shards are cut (``strategy.partition``).

- ``balanced`` (the default): no order; owners go largest first to the lightest shard
  (``sisa.partition_owners``), so each shard is a random-looking mix.
- ``label``: owners ordered by their label histogram (dominant label, then the
  runner-up, purest first), so a shard holds owners of few classes.
- ``kmeans``: owners ordered by k-means cluster (k = shards) of their mean row under a
  frozen embedding: a fixed random projection of the raw features (seeded, so the
  same data gives the same partition), which keeps distances between rows (Johnson-
  Lindenstrauss) at a size k-means runs on for millions of rows.

Before any of that, ``held_out`` may keep whole owners out of training
(``strategy.holdout``): rows no constituent sees, for the stopping rules of approximate
methods on a one-shard model.

Either order is then cut into contiguous runs of near-equal sample counts, one per
shard: every owner stays whole in one shard and the shards stay balanced, but similar
owners share a shard (seed 001: clustered shards make stronger weak learners). All
functions take owner codes (indices into the sorted owner ids) and work on arrays.
"""
from __future__ import annotations

import numpy as np

PARTITIONS = ("balanced", "label", "kmeans")
EMBED_DIMS = 32
BLOCK_ROWS = 8192


HOLDOUT_MIN_ROWS = 100  # the fewest unseen rows a stopping rule is given (approximate.heldout_rows)


def held_out(codes: np.ndarray, n_owners: int, share: float, *, seed: int) -> np.ndarray:
    """Owner codes kept out of training: whole owners, taken in a seeded random order
    while they fit in ``share`` of the rows, or in HOLDOUT_MIN_ROWS where that is more
    and no more than a tenth of the rows (so a small dataset still gets a stopping rule);
    an owner that would overshoot is passed over, so one large owner is never held out
    for a small share; never every owner."""
    if share <= 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(codes, minlength=n_owners)
    order = np.random.default_rng(seed).permutation(n_owners)
    budget, taken = max(share * len(codes), min(HOLDOUT_MIN_ROWS, 0.1 * len(codes))), []
    for code in order[counts[order] > 0]:
        if counts[code] <= budget:
            taken.append(code)
            budget -= counts[code]
            if budget < 1:
                break
    if len(taken) == int((counts > 0).sum()):
        taken.pop()
    return np.sort(np.asarray(taken, dtype=np.int64))


def contiguous_groups(order: np.ndarray, sizes: np.ndarray, k: int, min_owners: int = 1) -> list[np.ndarray]:
    """Cut ``order`` (owner codes) into ``k`` contiguous runs of at least ``min_owners``
    owners each (a shard's slices need one owner each), whose sample counts
    (``sizes[code]``) are near ``total / k``."""
    if len(order) < k * min_owners:
        raise ValueError(f"cannot place {len(order)} owners in {k} groups of at least {min_owners}")
    total = float(sizes[order].sum())
    cut, group, load, members = np.empty(len(order), dtype=np.int32), 0, 0.0, 0
    for pos, owner in enumerate(order):
        size = float(sizes[owner])
        left = len(order) - pos  # owners not placed yet, this one included
        if group < k - 1 and members >= min_owners and (
                load + size / 2 > total * (group + 1) / k or left == (k - 1 - group) * min_owners):
            group, members = group + 1, 0  # past the boundary, or the rest must fill the groups left
        cut[pos] = group
        load += size
        members += 1
    return [order[cut == g] for g in range(k)]


def label_order(codes: np.ndarray, labels: np.ndarray, n_owners: int, num_classes: int) -> np.ndarray:
    """Owner codes ordered by dominant label, then runner-up label, purest first.

    Works on the (owner, label) pairs that occur, not an owners x classes table (a
    million owners of a thousand classes would be gigabytes); ties go to the lower label."""
    keys, counts = np.unique(codes.astype(np.int64) * num_classes + labels, return_counts=True)
    owner, label = keys // num_classes, keys % num_classes
    ranked = np.lexsort((label, -counts, owner))  # per owner: the most frequent label first
    owner, label, counts = owner[ranked], label[ranked], counts[ranked]
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # each owner's top pair
    dominant = np.zeros(n_owners, dtype=np.int64)
    runner_up = np.full(n_owners, -1, dtype=np.int64)  # -1: a pure owner, first in its label
    purity = np.zeros(n_owners)
    totals = np.bincount(owner, weights=counts, minlength=n_owners)
    dominant[owner[first]] = label[first]
    purity[owner[first]] = counts[first] / totals[owner[first]]
    second = first + 1
    has_second = second < len(owner)
    has_second[has_second] = owner[second[has_second]] == owner[first[has_second]]
    runner_up[owner[first[has_second]]] = label[second[has_second]]
    return np.lexsort((np.arange(n_owners), -purity, runner_up, dominant))


def owner_embedding(blocks, codes_of, counts: np.ndarray, width: int, *, dims: int = EMBED_DIMS,
                    seed: int = 0) -> np.ndarray:
    """Each owner's mean row under a fixed random projection to ``dims`` dimensions
    (float32, owners x dims); ``counts`` is each owner's number of rows.

    ``blocks`` yields ``(sample_ids, x)`` pieces of the data (any order, any size);
    ``codes_of(sample_ids)`` gives their owner codes. Only one block of
    :data:`BLOCK_ROWS` rows is in memory at a time."""
    proj = np.random.default_rng(seed).standard_normal((width, dims)).astype(np.float32) / np.sqrt(dims)
    sums = np.zeros((len(counts), dims), dtype=np.float32)
    for ids, x in blocks:
        for start in range(0, len(ids), BLOCK_ROWS):
            rows = np.asarray(x[start:start + BLOCK_ROWS], dtype=np.float32).reshape(-1, width)
            owner = codes_of(ids[start:start + BLOCK_ROWS])
            order = np.argsort(owner, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(owner[order]) != 0])
            sums[owner[order][starts]] += np.add.reduceat((rows @ proj)[order], starts, axis=0)
    return sums / np.maximum(counts, 1)[:, None].astype(np.float32)


def kmeans_order(points: np.ndarray, weights: np.ndarray, k: int, *, seed: int = 0,
                 iterations: int = 50) -> np.ndarray:
    """Owner codes ordered by weighted k-means cluster (k-means++ start, Lloyd steps),
    clusters by their centroid's first coordinate, owners by distance to their centroid."""
    rng = np.random.default_rng(seed)
    n = len(points)
    w = weights.astype(np.float64) / weights.sum()
    centres = [points[rng.choice(n, p=w)]]
    d2 = _sq_dist(points, centres[0][None])[:, 0]
    for _ in range(1, min(k, n)):
        p = w * d2
        centres.append(points[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.choice(n)])
        d2 = np.minimum(d2, _sq_dist(points, centres[-1][None])[:, 0])  # distance to the nearest centre so far
    centres = np.asarray(centres)
    for _ in range(iterations):
        assign = _sq_dist(points, centres).argmin(1)
        moved = centres.copy()
        for c in range(len(centres)):
            mine = assign == c
            if mine.any():
                moved[c] = np.average(points[mine], axis=0, weights=weights[mine])
        if np.allclose(moved, centres):
            break
        centres = moved
    dist = _sq_dist(points, centres)
    assign = dist.argmin(1)
    rank = np.argsort(np.argsort(centres[:, 0], kind="stable"), kind="stable")  # cluster -> position
    return np.lexsort((np.arange(n), dist[np.arange(n), assign], rank[assign]))


def _sq_dist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances, owners x centres, without an owners x centres x dims array."""
    d = (points * points).sum(1, dtype=np.float64)[:, None] - 2 * (points @ centres.T) + (centres * centres).sum(1)[None]
    return np.maximum(d, 0)
