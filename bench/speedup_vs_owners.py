"""SISA's speed-up over a full retrain against the number of owners removed in one pass.

    python bench/speedup_vs_owners.py [--dataset fashion-mnist] [--shards 8] [--slices 4] [--epochs 5]
        [--owners 1 2 4 8 16 32 64]

Trains one SISA model, keeps a copy of its data directory, times a full retrain of every
shard on a copy, then for each k restores the copy and times ``Engine.unlearn`` of k
owners drawn at random (seeded): the speed-up is the full retrain's seconds over the
unlearn's. Both are whole engine calls (erasure, planning, training, evaluation,
publish). Writes the numbers as JSON and the figure as docs/figures/speedup_vs_owners.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.settings import Settings  # noqa: E402
from workers.engine.engine import Engine  # noqa: E402
from workers.engine.sisa import Strategy  # noqa: E402
from workers.engine.training import TrainConfig  # noqa: E402


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--owners", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--no-figure", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    base, work = out / "speedup-base", out / "speedup-work"
    for d in (base, work):
        shutil.rmtree(d, ignore_errors=True)
    engine = Engine(base)
    path = args.fashion_mnist_dir if args.dataset == "fashion-mnist" else None
    info = engine.import_dataset("data", args.dataset, seed=args.seed, path=path)
    print(f"imported {info.n_samples} rows, {info.n_owners} owners", flush=True)
    v1, t_train = timed(engine.train, "sisa", dataset="data", architecture="cnn",
                        strategy=Strategy("sisa", args.shards, args.slices),
                        config=TrainConfig(epochs=args.epochs, seed=args.seed))
    print(f"trained S={args.shards} R={args.slices} in {t_train:.1f} s, TA {v1['metrics']['test_accuracy']:.4f}",
          flush=True)

    def fresh() -> Engine:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        return Engine(work)

    _, t_full = timed(fresh().retrain_full, "sisa")
    print(f"full retrain: {t_full:.1f} s", flush=True)
    owners = [o for o, _ in engine.dataset("data").owners(limit=1_000_000)]
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in args.owners:
        picked = rng.choice(owners, size=k, replace=False).tolist()
        v, t = timed(fresh().unlearn, "sisa", picked)
        retrained = v["metrics"]["retrained_shards"]
        rows.append({"owners": k, "seconds": round(t, 2), "speedup": round(t_full / t, 2),
                     "samples": v["removed"]["sample_count"], "shards_retrained": len(retrained),
                     "shards_total": args.shards,
                     "from_slice": sorted(c["retrained_from_slice"] for c in v["constituents"]
                                          if c["status"] == "retrained")})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                         f"device {engine.device}",
              "args": vars(args), "train_seconds": round(t_train, 1), "full_retrain_seconds": round(t_full, 1),
              "rows": rows}
    (out / f"speedup_vs_owners_{args.dataset}.json").write_text(json.dumps(result, indent=1))
    print("\n| owners | rows removed | shards retrained | seconds | speed-up |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['owners']} | {r['samples']} | {r['shards_retrained']} of {r['shards_total']} | "
              f"{r['seconds']:.1f} | {r['speedup']:.2f}× |")
    if not args.no_figure:
        from figures import speedup_vs_owners

        note = (f"{result['date'][:10]}, {args.dataset}, SISA S={args.shards} R={args.slices}, {args.epochs} epochs, "
                f"{os.cpu_count()} cores; full retrain {t_full:.0f} s")
        print("figure:", speedup_vs_owners(rows, title="Exact unlearning: speed-up vs owners removed", note=note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
