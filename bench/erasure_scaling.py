"""How one owner's erasure scales with the dataset: Fashion-MNIST's 60,000 training
rows, and a 10x synthetic replica of them (600,000 rows, each copy with its own owners).

For each size the dataset is written through the ledger (``DatasetStore.create``, as an
import does), then ``--owners`` owners of median size are erased one at a time
(``Dataset.erase_owners``: the raw rows leave the disk and the ledger records the
erasure), each timed. Prints one JSON line per size and a markdown table row.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from app.settings import Settings
from workers.engine.ledger import DatasetStore
from workers.engine.sources import assign_owners, load_fashion_mnist


def measure(root: Path, name: str, x: np.ndarray, y: np.ndarray, owners: np.ndarray, n_erase: int) -> dict:
    store = DatasetStore(root)
    started = time.perf_counter()
    ds = store.create(name, x=x, y=y, owner_ids=owners, x_test=None, y_test=None, num_classes=10,
                      input_shape=list(x.shape[1:]), x_scale=255.0, source={"name": "bench"})
    create_s = time.perf_counter() - started
    ds = store.open(name)
    counts = dict(ds.owners(limit=10**7))
    median = statistics.median(counts.values())
    picked = sorted(o for o, c in counts.items() if c == median)[:n_erase]
    times = []
    for owner in picked:
        started = time.perf_counter()
        ds.erase_owners([owner])
        times.append(time.perf_counter() - started)
    return {"rows": int(len(x)), "owners": len(counts), "rows_per_erased_owner": median,
            "erase_seconds_median": round(statistics.median(times), 4), "erase_seconds": [round(t, 4) for t in times],
            "create_seconds": round(create_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--owners", type=int, default=5, help="owners erased (and timed) at each size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lethe-erasure-"))
    try:
        src = load_fashion_mnist(args.fashion_mnist_dir, root / "cache")
        x, y = src.x, src.y
        base = assign_owners(len(x), seed=args.seed)
        results = [measure(root, "fm", x, y, base, args.owners)]
        # The replica: copy r has the same rows under owners of its own.
        big_owners = np.concatenate([np.char.add(f"r{r}-", base.astype(str)) for r in range(args.replicas)])
        results.append(measure(root, "fm-x10", np.concatenate([x] * args.replicas), np.concatenate([y] * args.replicas),
                               big_owners, args.owners))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = results[1]["erase_seconds_median"] / results[0]["erase_seconds_median"]
    meta = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "date": datetime.now(timezone.utc).date().isoformat(), "ratio_600k_to_60k": round(ratio, 2)}
    for r in results:
        print(json.dumps(r))
    print(json.dumps(meta))
    for r in results:
        print(f"| {r['rows']:,} | {r['owners']:,} | {r['rows_per_erased_owner']} | "
              f"{r['erase_seconds_median'] * 1000:.0f} ms | {r['create_seconds']} s |")
    print(f"ratio 600k / 60k: {ratio:.2f}x")


if __name__ == "__main__":
    main()
