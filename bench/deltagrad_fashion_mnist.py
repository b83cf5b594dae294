"""DeltaGrad on Fashion-MNIST: distance to retraining and speed-up, by rows removed.

    python bench/deltagrad_fashion_mnist.py [--iterations 300] [--lr 4] [--removed 1 60 600 6000] [--seeds 0 1 2]

Trains one-vs-rest L2 logistic regression on the raw pixels of the 60,000 training
rows (the ``linear`` kind's unit-norm features) by full-batch gradient descent, keeping
the trajectory; then, for each number of random rows removed and each seed, compares
DeltaGrad's replay (``workers/engine/deltagrad.py``) with retraining by the same steps
on the remaining rows: relative distance of the weights (and the original model's, for
scale), test accuracy, wall times and the speed-up. Prints a markdown table and writes
the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from workers.engine import certified, deltagrad, nets, sources


def accuracy(w: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> float:
    return ((phi @ w).argmax(1) == y).double().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--lr", type=float, default=4.0)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--t0", type=int, default=5)
    ap.add_argument("--j0", type=int, default=10)
    ap.add_argument("--removed", type=int, nargs="+", default=[1, 60, 600, 6000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    raw = sources.load_fashion_mnist(Settings().fashion_mnist_dir, Path(args.out) / "cache")
    phi = nets.certified_features(torch.as_tensor(raw.x, dtype=torch.float64))
    phi_test = nets.certified_features(torch.as_tensor(raw.x_test, dtype=torch.float64))
    y, y_test = torch.as_tensor(raw.y, dtype=torch.int64), torch.as_tensor(raw.y_test, dtype=torch.int64)
    ypm = certified.signs(y, raw.num_classes)
    schedule = deltagrad.Schedule(lr=args.lr, iterations=args.iterations, l2=args.l2, j0=args.j0, t0=args.t0)
    started = time.perf_counter()
    trained, trajectory = deltagrad.train(phi, ypm, schedule)
    train_s = time.perf_counter() - started
    print(f"trained {args.iterations} steps in {train_s:.1f} s; TA {accuracy(trained, phi_test, y_test):.4f}", flush=True)

    rows = []
    for r in args.removed:
        for seed in args.seeds:
            gone = torch.zeros(len(y), dtype=torch.bool)
            gone[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:r]] = True
            t = time.perf_counter()
            exact = deltagrad.retrain(phi[~gone], ypm[~gone], schedule)
            retrain_s = time.perf_counter() - t
            t = time.perf_counter()
            replay = deltagrad.remove(trajectory, phi[~gone], ypm[~gone], phi[gone], ypm[gone], schedule)
            replay_s = time.perf_counter() - t
            scale = exact.norm().item()
            row = {"removed": r, "seed": seed,
                   "rel_distance": (replay.weights - exact).norm().item() / scale,
                   "original_rel_distance": (trained - exact).norm().item() / scale,
                   "ta_retrain": accuracy(exact, phi_test, y_test), "ta_deltagrad": accuracy(replay.weights, phi_test, y_test),
                   "retrain_s": retrain_s, "deltagrad_s": replay_s, "speed_up": retrain_s / replay_s,
                   "exact_steps": replay.exact_steps}
            rows.append(row)
            print(row, flush=True)

    print(f"\n{args.iterations} GD steps, lr {args.lr}, l2 {args.l2}, j0 {args.j0}, T0 {args.t0}, m 2; "
          f"seeds {args.seeds}; trained in {train_s:.1f} s\n")
    print("| rows removed | DeltaGrad to retrain (rel.) | original to retrain (rel.) | TA retrain | TA DeltaGrad | "
          "retrain s | DeltaGrad s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in args.removed:
        mine = [x for x in rows if x["removed"] == r]

        def mean(key):
            return float(np.mean([x[key] for x in mine]))

        def sd(key):
            return float(np.std([x[key] for x in mine]))

        print(f"| {r} | {mean('rel_distance'):.1e} ± {sd('rel_distance'):.0e} | {mean('original_rel_distance'):.1e} | "
              f"{100 * mean('ta_retrain'):.2f} | {100 * mean('ta_deltagrad'):.2f} | {mean('retrain_s'):.1f} | "
              f"{mean('deltagrad_s'):.1f} | {mean('speed_up'):.2f} ± {sd('speed_up'):.2f}× |")
    result = {"args": vars(args), "train_seconds": train_s, "rows": rows, "machine": platform.platform(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "deltagrad_fashion_mnist.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
