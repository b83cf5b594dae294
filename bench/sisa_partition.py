"""Clustered SISA: test accuracy of S x R SISA on Fashion-MNIST per ``strategy.partition``.

    python bench/sisa_partition.py [--epochs 5] [--shards 8] [--slices 4] [--label-alpha 0.1] [--seed 0]

Imports Fashion-MNIST twice: owners with a random class mix (the default import) and,
with ``--label-alpha``, owners with a class mix of their own (Dirichlet(alpha) shares,
as real people's data tends to be). On each, trains the small CNN monolithically (the
reference) and as SISA with every partition (balanced, label, kmeans), and reports
test accuracy, the gap to the monolithic model, the mean label entropy of a shard
(bits; 3.32 is a uniform mix of 10 classes) and the training wall time. Prints a
markdown table and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from workers.engine.engine import Engine
from workers.engine.placement import PARTITIONS
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig


def shard_entropy(engine: Engine, model: str, dataset: str) -> float:
    """Mean over shards of the label entropy (bits) of the rows a shard trained on."""
    arrays = engine.dataset(dataset).load_arrays(lazy=True)
    entropies = []
    for slices in engine.slice_ids(engine.version(model, 1)):
        ids = np.concatenate(slices)
        y = arrays.y[np.searchsorted(arrays.sample_ids, ids)]
        p = np.bincount(y) / len(y)
        p = p[p > 0]
        entropies.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(entropies))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--label-alpha", type=float, default=0.1,
                    help="the second import's owner class-mix concentration (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    out = Path(args.out)
    data_dir = out / "partition-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(data_dir, progress=lambda m, state=None: None)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    owners = {"random mix": None, **({f"Dirichlet({args.label_alpha})": args.label_alpha} if args.label_alpha else {})}
    rows = []
    for o, (label, alpha) in enumerate(owners.items()):
        ds = f"fm{o}"
        info = engine.import_dataset(ds, "fashion-mnist", seed=args.seed, path=args.fashion_mnist_dir,
                                     label_alpha=alpha)
        print(f"{label}: {info.n_samples} rows, {info.n_owners} owners", flush=True)
        t = time.perf_counter()
        mono = engine.train(f"mono{o}", dataset=ds, architecture="cnn", strategy=Strategy("monolithic", holdout=0.0),
                            config=cfg)  # every row, as SISA
        mono_ta = mono["metrics"]["test_accuracy"]
        print(f"  monolithic: TA {mono_ta:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        for partition in PARTITIONS:
            name = f"sisa{o}-{partition}"
            t = time.perf_counter()
            v = engine.train(name, dataset=ds, architecture="cnn", config=cfg,
                             strategy=Strategy("sisa", args.shards, args.slices, partition=partition))
            seconds = time.perf_counter() - t
            row = {"owners": label, "partition": partition, "ta": v["metrics"]["test_accuracy"],
                   "gap_to_mono_pts": round(100 * (mono_ta - v["metrics"]["test_accuracy"]), 2),
                   "mono_ta": mono_ta, "shard_label_entropy": round(shard_entropy(engine, name, ds), 3),
                   "train_seconds": round(seconds, 1)}
            rows.append(row)
            print(f"  {partition}: {row}", flush=True)
    print(f"\nSISA S={args.shards} x R={args.slices}, CNN, {args.epochs} epochs, seed {args.seed}\n")
    print("| owners | partition | TA | vs monolithic (pts) | shard label entropy (bits) | train s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['owners']} | {r['partition']} | {r['ta']:.4f} | {-r['gap_to_mono_pts']:+.2f} | "
              f"{r['shard_label_entropy']:.2f} | {r['train_seconds']:.0f} |")
    result = {"args": vars(args), "rows": rows, "machine": platform.platform(), "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / f"sisa_partition_seed{args.seed}.json").write_text(json.dumps(result, indent=2, default=str))
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
