"""SISA vs monolithic on Fashion-MNIST: accuracy and the cost of exact unlearning.

    python bench/sisa_fashion_mnist.py [--epochs 5] [--shards 8] [--slices 4] [--slice-epochs each|budget]

Trains the small CNN monolithically and as SISA (S shards x R slices) with the same
epochs, then times: unlearning single random owners, a batch of 10 owners, a full
retrain of the same SISA model, and a retrain of the monolithic model. Wall times are
whole ``Engine`` calls (erasure, data loading, training, evaluation and publish).
Prints a markdown table and writes the raw numbers as JSON.
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
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--single-owners", type=int, default=3, help="how many single-owner deletions to time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slice-epochs", default="each", choices=["each", "budget"],
                    help="passes per SISA slice step (see TrainConfig)")
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir,
                    help="the IDX files (env LETHE_FASHION_MNIST_DIR; default Debian's location)")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    out = Path(args.out)
    data_dir = out / f"sisa-data-{args.slice_epochs}"
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(data_dir, progress=lambda m, state=None: m and print("  ", m, flush=True))
    info = engine.import_dataset("fmnist", "fashion-mnist", seed=args.seed, path=args.fashion_mnist_dir)
    print(f"imported {info.n_samples} train / {info.n_test} test samples, {info.n_owners} owners")
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)

    mono, t_mono = timed(engine.train, "mono", dataset="fmnist", architecture="cnn",
                         strategy=Strategy("monolithic", holdout=0.0), config=cfg)  # every row, as SISA
    sisa_v1, t_sisa = timed(engine.train, "sisa", dataset="fmnist", architecture="cnn",
                            strategy=Strategy("sisa", args.shards, args.slices),
                            config=TrainConfig(epochs=args.epochs, seed=args.seed, slice_epochs=args.slice_epochs))

    rng = np.random.default_rng(args.seed)
    owners = [o for o, _ in engine.dataset("fmnist").owners(limit=100_000)]
    picked = rng.choice(owners, size=args.single_owners + 10, replace=False).tolist()
    singles = []
    for owner in picked[: args.single_owners]:
        v, t = timed(engine.unlearn, "sisa", [owner])
        singles.append({"owner": owner, "seconds": t, "rte_seconds": v["metrics"]["rte_seconds"],
                        "samples": v["removed"]["sample_count"],
                        "retrained": v["metrics"]["retrained_shards"],
                        "from_slice": [c["retrained_from_slice"] for c in v["constituents"] if c["status"] == "retrained"],
                        "test_accuracy": v["metrics"]["test_accuracy"]})
    batch, t_batch = timed(engine.unlearn, "sisa", picked[args.single_owners :])
    full, t_full = timed(engine.retrain_full, "sisa")
    mono_re, t_mono_re = timed(engine.unlearn, "mono", [])

    t_single = float(np.mean([s["seconds"] for s in singles]))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {engine.device}",
        "args": vars(args),
        "test_accuracy": {"monolithic": mono["metrics"]["test_accuracy"], "sisa": sisa_v1["metrics"]["test_accuracy"]},
        "seconds": {"train_monolithic": t_mono, "train_sisa": t_sisa, "unlearn_single_mean": t_single,
                    "unlearn_batch10": t_batch, "full_retrain_sisa": t_full, "retrain_monolithic": t_mono_re},
        "singles": singles,
        "batch": {"samples": batch["removed"]["sample_count"], "retrained": batch["metrics"]["retrained_shards"]},
        "accuracy_after": {"sisa_full_retrain": full["metrics"]["test_accuracy"],
                           "monolithic_retrain": mono_re["metrics"]["test_accuracy"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sisa_fashion_mnist_{args.slice_epochs}.json").write_text(json.dumps(result, indent=1))

    acc_m, acc_s = result["test_accuracy"]["monolithic"], result["test_accuracy"]["sisa"]
    print(f"\n| model | test accuracy | train s |\n|---|---|---|")
    print(f"| monolithic CNN | {acc_m:.4f} | {t_mono:.1f} |")
    print(f"| SISA CNN S={args.shards} R={args.slices} (mean softmax, slice epochs {args.slice_epochs}) "
          f"| {acc_s:.4f} | {t_sisa:.1f} |")
    print(f"\nSISA - monolithic: {100 * (acc_s - acc_m):+.2f} points\n")
    print("| operation | wall s | speed-up vs SISA full retrain | speed-up vs monolithic retrain |\n|---|---|---|---|")
    for label, t in [
        (f"unlearn 1 owner (mean of {len(singles)})", t_single),
        ("unlearn batch of 10 owners", t_batch),
        ("full retrain of the SISA model", t_full),
        ("retrain of the monolithic model", t_mono_re),
    ]:
        print(f"| {label} | {t:.1f} | {t_full / t:.1f}x | {t_mono_re / t:.1f}x |")
    print("\nsingle owners:")
    for s in singles:
        print(f"  {s['owner']}: {s['samples']} samples, shard {s['retrained']} from slice {s['from_slice']}, "
              f"{s['seconds']:.1f}s wall, {s['rte_seconds']:.1f}s shard retraining "
              f"({s['seconds'] / s['rte_seconds']:.2f}x)")
    print(f"batch of 10: {result['batch']['samples']} samples, retrained shards {result['batch']['retrained']}")


if __name__ == "__main__":
    main()
