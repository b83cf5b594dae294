"""What a DeltaGrad model kind keeps between removals, shared by the ``linear`` kind's gd
head (``linear``) and the ``gd`` kind's network (``gdnet``): the schedule, the stored
trajectory, and whether a removal can replay it or must retrain."""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models_store import ModelStore
from workers.engine import deltagrad
from workers.engine.digests import ids_digest
from workers.engine.ids import get_ids
from workers.engine.plans import Plan, ShardPlan
from workers.engine.sisa import Strategy
from workers.engine.unlearning.deltagrad import Config as DeltaGradConfig


def schedule(strategy: Strategy, method_config: dict | None = None) -> deltagrad.Schedule:
    """Training's steps from the strategy, the replay's settings from the method."""
    replay = {k: v for k, v in (method_config or {}).items() if k in ("j0", "t0", "m")}  # not max_replays
    return deltagrad.Schedule(lr=strategy.lr, iterations=strategy.iterations, l2=strategy.l2, **replay)


def save(store: ModelStore, trajectory: deltagrad.Trajectory) -> str:
    """Every step's weights and gradient (float64) and which gradients are exact, as a blob."""
    exact = trajectory.exact if trajectory.exact is not None else torch.ones(len(trajectory.weights), dtype=torch.bool)
    return store.put_blob(st_save({"weights": trajectory.weights.cpu().contiguous(),
                                   "gradients": trajectory.gradients.cpu().contiguous(),
                                   "exact": exact.to(torch.uint8).cpu().contiguous()}))


def load(store: ModelStore, state: dict, device: torch.device) -> deltagrad.Trajectory:
    """The trajectory a checkpoint's ``deltagrad`` state names."""
    blob = st_load(store.get_blob(state["trajectory"]))
    return deltagrad.Trajectory(blob["weights"].to(device), blob["gradients"].to(device), state["n"],
                                blob["exact"].bool() if "exact" in blob else None, state.get("replays", 0))


def must_retrain(plan: Plan, entry: ShardPlan, parent_info: dict, ids: np.ndarray, *,
                 store: ModelStore) -> tuple[str, dict] | None:
    """Why this removal retrains by gradient descent instead of replaying (what to say,
    and what the checkpoint records), or None when it can replay: the parent has no
    trajectory of these rows (another method's weights, or a solver head), or has been
    replayed ``max_replays`` times since training (each replay's approximations add up)."""
    state = parent_info.get("deltagrad")
    trained_on = ids_digest(np.union1d(ids, get_ids(store, entry.forget_ids)))
    if state is None or parent_info.get("manifest_digest") != trained_on:
        return "nothing to replay", {"no_trajectory": True}
    limit = plan.method.config.get("max_replays", DeltaGradConfig.max_replays)
    if state.get("replays", 0) >= limit:
        return f"{limit} removals replayed since training", {"replay_limit": limit}
    return None
