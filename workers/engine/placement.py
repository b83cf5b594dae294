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


def contiguous_groups(order: np.ndarray, sizes: np.ndarray, k: int) -> list[np.ndarray]:
    """Cut ``order`` (owner codes) into ``k`` contiguous non-empty runs whose sample
    counts (``sizes[code]``) are near ``total / k`` each."""
    if len(order) < k:
        raise ValueError(f"cannot place {len(order)} owners in {k} groups")
    total = float(sizes[order].sum())
    cut, group, load = np.empty(len(order), dtype=np.int32), 0, 0.0
    for pos, owner in enumerate(order):
        size = float(sizes[owner])
        if group < k - 1 and pos > 0 and cut[pos - 1] == group and (
                load + size / 2 > total * (group + 1) / k or len(order) - pos == k - 1 - group):
            group += 1  # this owner's midpoint is past the boundary, or the rest must fill the groups left
        cut[pos] = group
        load += size
    return [order[cut == g] for g in range(k)]


def label_order(codes: np.ndarray, labels: np.ndarray, n_owners: int, num_classes: int) -> np.ndarray:
    """Owner codes ordered by dominant label, then runner-up label, purest first."""
    hist = np.bincount(codes.astype(np.int64) * num_classes + labels, minlength=n_owners * num_classes)
    hist = hist.reshape(n_owners, num_classes).astype(np.float64)
    ranked = np.argsort(-hist, axis=1, kind="stable")
    dominant = ranked[:, 0]
    runner_up = ranked[:, 1] if num_classes > 1 else np.zeros(n_owners, dtype=np.int64)
    purity = hist.max(1) / np.maximum(hist.sum(1), 1)
    return np.lexsort((np.arange(n_owners), -purity, runner_up, dominant))


def owner_embedding(blocks, codes_of, n_owners: int, width: int, *, dims: int = EMBED_DIMS,
                    seed: int = 0) -> np.ndarray:
    """Each owner's mean row under a fixed random projection to ``dims`` dimensions.

    ``blocks`` yields ``(sample_ids, x)`` pieces of the data (any order, any size);
    ``codes_of(sample_ids)`` gives their owner codes. Only one block of
    :data:`BLOCK_ROWS` rows is in memory at a time."""
    proj = np.random.default_rng(seed).standard_normal((width, dims)).astype(np.float32) / np.sqrt(dims)
    sums = np.zeros((n_owners, dims))
    counts = np.zeros(n_owners)
    for ids, x in blocks:
        for start in range(0, len(ids), BLOCK_ROWS):
            rows = np.asarray(x[start:start + BLOCK_ROWS], dtype=np.float32).reshape(-1, width)
            owner = codes_of(ids[start:start + BLOCK_ROWS])
            np.add.at(sums, owner, rows @ proj)
            counts += np.bincount(owner, minlength=n_owners)
    return sums / np.maximum(counts, 1)[:, None]


def kmeans_order(points: np.ndarray, weights: np.ndarray, k: int, *, seed: int = 0,
                 iterations: int = 50) -> np.ndarray:
    """Owner codes ordered by weighted k-means cluster (k-means++ start, Lloyd steps),
    clusters by their centroid's first coordinate, owners by distance to their centroid."""
    rng = np.random.default_rng(seed)
    n = len(points)
    w = weights.astype(np.float64) / weights.sum()
    centres = [points[rng.choice(n, p=w)]]
    for _ in range(1, min(k, n)):
        d2 = _sq_dist(points, np.asarray(centres)).min(1)
        p = w * d2
        centres.append(points[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.choice(n)])
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
    d = (points ** 2).sum(1)[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None]
    return np.maximum(d, 0)
