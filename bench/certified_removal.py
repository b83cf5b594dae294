"""Certified removal on Fashion-MNIST (raw pixels): a ``linear`` head trained with the
loss perturbation, owners removed one at a time by the certified Newton step until the
(epsilon, delta) budget would run out, against retraining the head.

For each seed: the private head is trained (``certified.fit``: the L-BFGS solve, then
the Hessian sums removal needs), a non-private head (no perturbation) is solved for the
accuracy comparison, and owners of median size (Zipf owners as the ``fashion-mnist``
source assigns them) are removed in turn with ``certified.remove``, each timed, until
the accumulated bound would exceed the budget. The speed-up compares one removal with
retraining the head on the remaining rows (the solve alone, the cheapest retrain, and
the solve plus the Hessian sums that the next removal needs).

    .venv/bin/python bench/certified_removal.py --seeds 3
    .venv/bin/python bench/certified_removal.py --seeds 3 --features cnn

``--features cnn``: the head reads the penultimate features of a small CNN, frozen, as
the ``linear`` kind does over a backbone (``nets.CertifiedLinear``). The CNN is
pretrained with Lethe's training loop on the rows of a random half of the owners (the
"public" data a backbone must come from: certified removal covers the head, not the
extractor), and the head is trained on, and removes owners from, the other half.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch

from app.settings import Settings
from workers.engine import certified, nets
from workers.engine.sources import assign_owners, load_fashion_mnist


def accuracy(w: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> float:
    return float(((phi @ w).argmax(1) == y).double().mean())


def run(seed: int, phi, y, phi_test, y_test, owners: np.ndarray, budget: certified.Budget, max_removals: int) -> dict:
    torch.manual_seed(seed)
    started = time.perf_counter()
    w_plain = certified.solve(phi, certified.signs(y, 10), budget.l2, torch.zeros(phi.shape[1], 10,
                                                                                   dtype=torch.float64))
    solve_s = time.perf_counter() - started
    started = time.perf_counter()
    head = certified.fit(phi, y, 10, budget, seed=seed)
    fit_s = time.perf_counter() - started
    out = {"seed": seed, "train_residual": head.bound, "budget": budget.residual_budget,
           "ta_plain": accuracy(w_plain, phi_test, y_test), "ta_private": accuracy(head.weights, phi_test, y_test),
           "solve_seconds": round(solve_s, 2), "fit_seconds": round(fit_s, 2)}
    counts = {o: int(c) for o, c in zip(*np.unique(owners, return_counts=True))}
    median = statistics.median(counts.values())
    order = np.random.default_rng(seed).permutation(sorted(o for o, c in counts.items() if c == median))
    # The rows held, compacted after each removal outside the timed part (the service
    # reads the remaining rows from the ledger; the erased ones are gone from it).
    held_phi, held_y, held_owners = phi, y, owners
    times, steps = [], []
    for owner in order[:max_removals]:
        gone = held_owners == owner
        keep_rows, gone_rows = torch.from_numpy(~gone), torch.from_numpy(gone)
        phi_keep, phi_gone, y_gone = held_phi[keep_rows], held_phi[gone_rows], held_y[gone_rows]
        started = time.perf_counter()
        after, added = certified.remove(head, phi_keep, phi_gone, y_gone, budget.l2)
        times.append(time.perf_counter() - started)
        if after.bound > budget.residual_budget:
            out["exhausted_at_removal"] = len(steps) + 1
            break
        head, steps = after, steps + [added]
        held_phi, held_y, held_owners = phi_keep, held_y[keep_rows], held_owners[~gone]
    out.update({"rows_per_owner": median, "owners_removed_within_budget": len(steps),
                "removal_seconds_median": round(statistics.median(times), 4),
                "first_step_bound": steps[0] if steps else None, "bound_after": head.bound,
                "ta_after": accuracy(head.weights, phi_test, y_test)})
    # Retraining the head on what is left, as the exact alternative to one removal.
    started = time.perf_counter()
    certified.solve(held_phi, certified.signs(held_y, 10), budget.l2,
                    budget.noise * torch.randn(phi.shape[1], 10, dtype=torch.float64))
    out["retrain_solve_seconds"] = round(time.perf_counter() - started, 2)
    out["speed_up_vs_solve"] = round(out["retrain_solve_seconds"] / out["removal_seconds_median"], 1)
    out["speed_up_vs_fit"] = round(out["fit_seconds"] / out["removal_seconds_median"], 1)
    return out


def pretrained_head(src, x, y, public: np.ndarray, epochs: int, x_test, y_test) -> tuple[nets.CertifiedLinear, dict]:
    """A head over a CNN's frozen features, the CNN trained on the ``public`` rows only."""
    from workers.engine.training import DeviceData, TrainConfig, make_optimizer, predict_proba, train_epochs

    cfg = TrainConfig(epochs=epochs, seed=0)
    cnn = nets.build("cnn", list(src.input_shape), 10, seed=0)
    data = DeviceData(np.arange(len(y)), x.numpy(), y.numpy(), 1.0, "cpu")
    started = time.perf_counter()
    train_epochs(cnn, make_optimizer(cnn, cfg), data, torch.from_numpy(np.flatnonzero(public)), cfg,
                 epochs=epochs, seed=0)
    seconds = time.perf_counter() - started
    cnn_ta = float((predict_proba(cnn, x_test).argmax(1) == y_test).double().mean())
    head = nets.CertifiedLinear(list(src.input_shape), 10, {"architecture": "cnn"})
    head.extractor.load_state_dict({k: v for k, v in cnn.state_dict().items() if k in head.extractor.state_dict()})
    return head, {"public_rows": int(public.sum()), "pretrain_seconds": round(seconds, 1), "cnn_ta": round(cnn_ta, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-4)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--max-removals", type=int, default=200)
    ap.add_argument("--features", choices=["raw", "cnn"], default="raw",
                    help="raw pixels, or a frozen CNN pretrained on the other half of the owners")
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    args = ap.parse_args()
    budget = certified.Budget(epsilon=args.epsilon, delta=args.delta, noise=args.noise, l2=args.l2)
    with tempfile.TemporaryDirectory() as cache:
        src = load_fashion_mnist(args.fashion_mnist_dir, cache)
    y, y_test = torch.as_tensor(src.y).long(), torch.as_tensor(src.y_test).long()
    owners = assign_owners(len(y), seed=0)
    x = torch.as_tensor(src.x, dtype=torch.float32) * src.x_scale
    x_test = torch.as_tensor(src.x_test, dtype=torch.float32) * src.x_scale
    head = nets.CertifiedLinear(list(src.input_shape), 10)
    extra = {}
    if args.features == "cnn":
        public = np.isin(owners, np.random.default_rng(0).permutation(np.unique(owners))[: len(np.unique(owners)) // 2])
        head, extra = pretrained_head(src, x, y, public, args.pretrain_epochs, x_test, y_test)
        x, y, owners = x[torch.from_numpy(~public)], y[torch.from_numpy(~public)], owners[~public]
    started = time.perf_counter()
    phi, phi_test = head.phi(x), head.phi(x_test)
    extra["feature_seconds"] = round(time.perf_counter() - started, 2)
    extra.update({"features": args.features, "rows": len(y), "dim": phi.shape[1]})
    results = [{**extra, **run(s, phi, y, phi_test, y_test, owners, budget, args.max_removals)}
               for s in range(args.seeds)]
    meta = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "date": datetime.now(timezone.utc).date().isoformat(), "budget": vars(args)}
    for r in results:
        print(json.dumps(r))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
