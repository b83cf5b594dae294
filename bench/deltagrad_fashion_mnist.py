"""DeltaGrad on Fashion-MNIST: distance to retraining and speed-up, by rows removed.

    python bench/deltagrad_fashion_mnist.py [--iterations 300] [--lr 4] [--removed 1 60 600 6000] [--seeds 0 1 2]
    python bench/deltagrad_fashion_mnist.py --model mlp --rows 10000 --iterations 200 --owners 1 10 100 \
        --lr 0.1 --l2 1e-4 --seeds 0 1

``--model mlp``: the ``gd`` kind's network instead (an MLP, ``--hidden`` units, over the
784 pixels in [0, 1] as a table's columns; ``workers/engine/gdnet.py``), its full
gradients by autograd. ``--owners``: remove that many random owners (Zipf-sized, as the
service assigns them) instead of ``--removed`` random rows.

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
import dataclasses
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from workers.engine import certified, deltagrad, nets, sources


class Logistic:
    """The linear kind's head: weights ``d x K`` over unit-norm features."""

    def __init__(self, raw, schedule):
        self.phi = nets.certified_features(torch.as_tensor(raw.x, dtype=torch.float64))
        self.phi_test = nets.certified_features(torch.as_tensor(raw.x_test, dtype=torch.float64))
        self.ypm = certified.signs(torch.as_tensor(raw.y, dtype=torch.int64), raw.num_classes)
        self.schedule = schedule

    def train(self):
        return deltagrad.train(self.phi, self.ypm, self.schedule)

    def retrain(self, keep):
        return deltagrad.retrain(self.phi[keep], self.ypm[keep], self.schedule)

    def remove(self, trajectory, keep):
        return deltagrad.remove(trajectory, self.phi[keep], self.ypm[keep], self.phi[~keep], self.ypm[~keep],
                                self.schedule)

    def test_predictions(self, w):
        return (self.phi_test @ w).argmax(1)


class Network:
    """The gd kind's network: a flat parameter vector ``P x 1``."""

    def __init__(self, raw, schedule, hidden: int):
        from torch.nn.utils import parameters_to_vector

        from workers.engine import gdnet

        self.gdnet, self.schedule = gdnet, schedule
        self.x = torch.as_tensor(raw.x.astype(np.float64) * raw.x_scale)
        self.x_test = torch.as_tensor(raw.x_test.astype(np.float64) * raw.x_scale)
        self.y = torch.as_tensor(raw.y, dtype=torch.int64)
        spec = {"architecture": "mlp", "architecture_params": {"hidden": hidden}, "input_shape": raw.input_shape,
                "num_classes": raw.num_classes, "recipe": {"seed": 0}}
        self.model = gdnet.network(spec)
        self.v0 = parameters_to_vector(self.model.parameters()).detach()[:, None]

    def objective(self, rows):
        return self.gdnet.Objective(self.model, self.x[rows], self.y[rows])

    def train(self):
        return deltagrad.descend(self.v0, self.objective(slice(None)), len(self.y), self.schedule)

    def retrain(self, keep):
        return deltagrad.descend(self.v0, self.objective(keep), int(keep.sum()), self.schedule)[0]

    def remove(self, trajectory, keep):
        return deltagrad.replay(trajectory, int(keep.sum()), self.objective(keep), int((~keep).sum()),
                                self.objective(~keep), self.schedule,
                                curvature=self.gdnet.curvature_bound(self.schedule.lr))

    @torch.no_grad()
    def test_predictions(self, v):
        from torch.nn.utils import vector_to_parameters

        vector_to_parameters(v[:, 0], list(self.model.parameters()))
        return self.model(self.x_test).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--lr", type=float, default=4.0)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--t0", type=int, default=5)
    ap.add_argument("--j0", type=int, default=10)
    ap.add_argument("--removed", type=int, nargs="+", default=[1, 60, 600, 6000])
    ap.add_argument("--owners", type=int, nargs="+", default=None, help="remove this many owners instead")
    ap.add_argument("--model", choices=["linear", "mlp"], default="linear")
    ap.add_argument("--hidden", type=int, default=32, help="mlp: hidden units")
    ap.add_argument("--rows", type=int, default=None, help="train on this many random training rows (all: 60,000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    raw = sources.load_fashion_mnist(Settings().fashion_mnist_dir, Path(args.out) / "cache")
    if args.rows:
        keep = np.sort(np.random.default_rng(0).permutation(len(raw.y))[: args.rows])
        raw = dataclasses.replace(raw, x=raw.x[keep], y=raw.y[keep])
    y_test = torch.as_tensor(raw.y_test, dtype=torch.int64)
    schedule = deltagrad.Schedule(lr=args.lr, iterations=args.iterations, l2=args.l2, j0=args.j0, t0=args.t0)
    model = Network(raw, schedule, args.hidden) if args.model == "mlp" else Logistic(raw, schedule)
    started = time.perf_counter()
    trained, trajectory = model.train()
    train_s = time.perf_counter() - started

    def accuracy(w):
        return (model.test_predictions(w) == y_test).double().mean().item()

    print(f"trained {args.iterations} steps in {train_s:.1f} s; TA {accuracy(trained):.4f}", flush=True)
    owners = sources.assign_owners(len(raw.y), seed=0)
    names = np.unique(owners)

    rows = []
    sizes = args.owners or args.removed
    for r in sizes:
        for seed in args.seeds:
            if args.owners:
                chosen = np.random.default_rng(seed).choice(names, r, replace=False)
                gone = torch.as_tensor(np.isin(owners, chosen))
            else:
                gone = torch.zeros(len(raw.y), dtype=torch.bool)
                gone[torch.randperm(len(raw.y), generator=torch.Generator().manual_seed(seed))[:r]] = True
            t = time.perf_counter()
            exact = model.retrain(~gone)
            retrain_s = time.perf_counter() - t
            t = time.perf_counter()
            replay = model.remove(trajectory, ~gone)
            replay_s = time.perf_counter() - t
            scale = exact.norm().item()
            row = {"removed": r, "rows": int(gone.sum()), "seed": seed,
                   "rel_distance": (replay.weights - exact).norm().item() / scale,
                   "original_rel_distance": (trained - exact).norm().item() / scale,
                   "ta_retrain": accuracy(exact), "ta_deltagrad": accuracy(replay.weights),
                   "retrain_s": retrain_s, "deltagrad_s": replay_s, "speed_up": retrain_s / replay_s,
                   "exact_steps": replay.exact_steps}
            rows.append(row)
            print(row, flush=True)

    print(f"\n{args.iterations} GD steps, lr {args.lr}, l2 {args.l2}, j0 {args.j0}, T0 {args.t0}, m 2; "
          f"seeds {args.seeds}; trained in {train_s:.1f} s\n")
    print(f"| {'owners' if args.owners else 'rows'} removed | DeltaGrad to retrain (rel.) | original to retrain (rel.) | TA retrain | TA DeltaGrad | "
          "retrain s | DeltaGrad s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sizes:
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
    (Path(args.out) / f"deltagrad_fashion_mnist_{args.model}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
