"""The ``gd`` model kind: a network (an MLP over a table, say) trained by full-batch
gradient descent, whose trajectory DeltaGrad replays (``workers.engine.deltagrad``;
Wu, Dobriban and Davidson, ICML 2020, who run it on such networks too).

Training runs ``iterations`` steps ``v <- v - lr (grad F(v) + l2 v)`` over the network's
parameters as one float64 vector ``v``, ``F`` the mean cross-entropy over every row,
and keeps every step's parameters and gradient (``2 x iterations x parameters`` float64
numbers; a model whose trajectory would pass :data:`MAX_TRAJECTORY_BYTES` is refused
when it is planned). ``method: deltagrad`` then replays the steps without the removed
rows, most full gradients approximated by L-BFGS from the stored ones; an exact removal
retrains by the same steps. The loss is not convex: curvature pairs of negative
curvature are skipped, and so are pairs steeper than :func:`curvature_bound`.

The network is evaluated in eval mode (a batch norm uses its running statistics, a
dropout is off), so each gradient is a function of the parameters alone.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from models_store import ModelStore
from workers.engine import checkpoints, deltagrad, nets, trajectories
from workers.engine.datasets import device_data
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, ModelError
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan, ShardPlan
from workers.engine.sisa import Strategy
from workers.engine.training import derive_seed

MAX_TRAJECTORY_BYTES = 512 << 20
BATCH = 4096  # rows per forward pass of a full gradient


def network(spec: dict) -> nn.Module:
    """The kind's network, seeded by the recipe's seed, in float64."""
    return nets.build(spec["architecture"], spec["input_shape"], spec["num_classes"],
                      seed=derive_seed(spec["recipe"].get("seed", 0), "gd-init"),
                      params=spec.get("architecture_params")).double()


def trajectory_bytes(model: nn.Module, iterations: int) -> int:
    return 2 * iterations * sum(p.numel() for p in model.parameters()) * 8


def check(spec: dict) -> None:
    """ModelError when the trajectory would be too large to keep."""
    size = trajectory_bytes(network(spec), Strategy(**spec["strategy"]).iterations)
    if size > MAX_TRAJECTORY_BYTES:
        raise ModelError(f"the gd kind keeps every step's parameters and gradient: {size / 2**20:.0f} MiB for this "
                         f"network and {spec['strategy']['iterations']} iterations, over the "
                         f"{MAX_TRAJECTORY_BYTES >> 20} MiB limit; use fewer iterations or a smaller network")


class Objective:
    """The summed cross-entropy gradient of ``model`` over rows ``(x, y)``, as a function
    of the flat parameter vector (``P x 1``)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.model, self.x, self.y = model.eval(), x, y

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        params = list(self.model.parameters())
        vector_to_parameters(v[:, 0], params)
        for p in params:
            p.grad = None
        for i in range(0, len(self.y), BATCH):
            F.cross_entropy(self.model(self.x[i:i + BATCH].double()), self.y[i:i + BATCH], reduction="sum").backward()
        return parameters_to_vector([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])[:, None]


def _rows(ds: Dataset, device: torch.device, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if not len(ids):
        raise ModelError("every row the network learned from has been removed: there is nothing left to train it on")
    data = device_data(ds, device)
    try:
        positions = data.rows(ids)
    except KeyError:
        raise DatasetError("the dataset changed while the network was planned") from None
    return data.x[positions], data.labels(positions)


def curvature_bound(lr: float) -> float:
    """The steepest curvature pair a replay keeps: ``1 / lr``, the curvature at which a
    step of ``lr`` still descends monotonically. On a Fashion-MNIST MLP, pairs up to
    ``2 / lr`` (where gradient descent stops converging) made a replay diverge that
    landed 36% closer to retraining than the unchanged network at ``1 / lr``; at
    ``1 / lr`` two of six replays still diverged (docs/benchmarks.md)."""
    return 1.0 / lr


def _save(store: ModelStore, spec: dict, model: nn.Module, v: torch.Tensor, trajectory: deltagrad.Trajectory,
          ids: np.ndarray, *, retrained: bool, extra: dict | None = None) -> str:
    vector_to_parameters(v[:, 0].detach(), list(model.parameters()))
    path = trajectories.save(store, trajectory)
    info = {
        "architecture": spec["architecture"], "input_shape": spec["input_shape"], "num_classes": spec["num_classes"],
        **({"architecture_params": spec["architecture_params"]} if spec.get("architecture_params") else {}),
        "shard": 0, "slice": 0, "samples_seen": int(len(ids)), "manifest_digest": ids_digest(ids),
        "deltagrad": {"trajectory": path, "n": trajectory.n, "replays": trajectory.replays, "retrained": retrained,
                      **(extra or {})},
    }
    return store.put_blob(checkpoints.dumps(model, torch.optim.SGD(model.parameters(), lr=0.0), info))


def _train(spec: dict, x: torch.Tensor, y: torch.Tensor, ids: np.ndarray, *, store: ModelStore,
           device: torch.device, retrained: bool, extra: dict | None = None) -> str:
    model = network(spec).to(device)
    v0 = parameters_to_vector(model.parameters()).detach()[:, None]
    v, trajectory = deltagrad.descend(v0, Objective(model, x, y), len(y),
                                        trajectories.schedule(Strategy(**spec["strategy"])))
    return _save(store, spec, model, v, trajectory, ids, retrained=retrained, extra=extra)


def train_net(plan: Plan, entry: ShardPlan, *, store: ModelStore, ds: Dataset, device: torch.device,
              progress) -> list[str]:
    """Train the network from scratch on the entry's rows (a new model, or an exact removal)."""
    ids = get_ids(store, entry.slices[0])
    x, y = _rows(ds, device, ids)
    progress(f"training the network by full-batch gradient descent on {len(ids)} samples")
    return [_train(plan.spec, x, y, ids, store=store, device=device, retrained=plan.parent is not None)]


def unlearn_net(plan: Plan, entry: ShardPlan, forget: tuple[torch.Tensor, torch.Tensor], *, store: ModelStore,
                ds: Dataset, device: torch.device, progress) -> str:
    """Replay the network's training without the forget rows ``(x, y)`` (DeltaGrad);
    retrain it when its parent has no trajectory to replay, or after ``max_replays``."""
    spec = plan.spec
    strategy = Strategy(**spec["strategy"])
    ids = np.concatenate([get_ids(store, k) for k in entry.slices])
    x, y = _rows(ds, device, ids)
    parent = checkpoints.loads(store.get_blob(entry.parent_weights))
    why = trajectories.must_retrain(plan, entry, parent.info, ids, store=store)
    if why is not None:
        progress(f"{why[0]}: retraining the network by gradient descent")
        return _train(spec, x, y, ids, store=store, device=device, retrained=True, extra=why[1])
    trajectory = trajectories.load(store, parent.info["deltagrad"], device)
    model = network(spec).to(device)
    keep, gone = Objective(model, x, y), Objective(model, forget[0], forget[1])
    result = deltagrad.replay(trajectory, len(y), keep, len(forget[1]), gone,
                              trajectories.schedule(strategy, plan.method.config),
                              curvature=curvature_bound(strategy.lr))
    if not torch.isfinite(result.weights).all():  # the approximations ran away: never publish that
        progress("the DeltaGrad replay diverged: retraining the network by gradient descent")
        return _train(spec, x, y, ids, store=store, device=device, retrained=True, extra={"diverged": True})
    progress(f"DeltaGrad removal of {len(forget[1])} samples: {result.exact_steps} exact and "
             f"{result.approximate_steps} approximated steps of {len(trajectory.weights)}")
    return _save(store, spec, model, result.weights, result.trajectory, ids, retrained=False,
                 extra={"exact_steps": result.exact_steps, "approximate_steps": result.approximate_steps})
