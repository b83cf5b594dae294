"""The ``linear`` model kind: a logistic-regression head trained with a perturbed loss so
that rows can be removed with a certificate (``workers.engine.certified``), or, with
``trainer: gd``, by full-batch gradient descent whose trajectory DeltaGrad replays
(``workers.engine.deltagrad``).

Training solves the convex objective exactly (no SGD recipe); an exact removal retrains
it from scratch; the ``certified`` method removes by one Newton step while the bound it
accumulates stays within the model's budget, and retrains with fresh noise when it
would not. Each checkpoint carries what the next removal needs (the anchor weights and
Hessian sums, as a blob) and what the version's metrics report (``certificate``).
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models_store import ModelStore
from workers.engine import certified, checkpoints, deltagrad, nets, trajectories, weights
from workers.engine.certified import Head
from workers.engine.datasets import device_data
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, ModelError
from workers.engine.ids import get_ids
from workers.engine.ledger import Dataset
from workers.engine.plans import Plan, ShardPlan
from workers.engine.sisa import Strategy
from workers.engine.training import DeviceData, derive_seed

ARCHITECTURE = "certified_linear"


def head_model(spec: dict, store: ModelStore, device: torch.device) -> nets.CertifiedLinear:
    """The head as a module (zero weights): over the raw rows, or over a frozen feature
    extractor holding the backbone's weights (the recipe's ``init``)."""
    model = nets.build(ARCHITECTURE, spec["input_shape"], spec["num_classes"], seed=0,
                       params=spec.get("architecture_params"))
    if model.extractor is not None:
        backbone = weights.read_weights(store.get_blob(spec["recipe"]["init"]))
        missing = [k for k in model.extractor.state_dict() if k not in backbone]
        if missing:
            raise ModelError(f"the backbone lacks the feature extractor's {missing[0]!r}: a frozen extractor "
                             f"would keep random weights there")
        model.extractor.load_state_dict({k: backbone[k] for k in model.extractor.state_dict()})
    return model.to(device)


def _features(head: nets.CertifiedLinear, data: DeviceData, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if not len(ids):
        raise ModelError("every row the linear head learned from has been removed: there is nothing left to "
                         "train it on")
    try:
        positions = data.rows(ids)
    except KeyError:
        raise DatasetError("the dataset changed while the linear head was planned") from None
    return head.phi(data.x[positions]), data.labels(positions)


def _noise_seed(spec: dict, parent: int | None) -> int:
    """Fresh noise for every training of the head: the first, and each retrain (after an
    exact removal or an exhausted budget) from a version's parent."""
    return derive_seed(spec["recipe"].get("seed", 0), "certified-noise", parent or 0)


def _info(spec: dict, ids: np.ndarray) -> dict:
    return {"architecture": ARCHITECTURE, "input_shape": spec["input_shape"], "num_classes": spec["num_classes"],
            **({"architecture_params": spec["architecture_params"]} if spec.get("architecture_params") else {}),
            "shard": 0, "slice": 0, "samples_seen": int(len(ids)), "manifest_digest": ids_digest(ids)}


def _dumps(model: nets.CertifiedLinear, weights: torch.Tensor, info: dict) -> bytes:
    model.weight.data = weights.T.to(model.weight.dtype).contiguous()
    return checkpoints.dumps(model, torch.optim.SGD([model.weight], lr=0.0), info)


def _save(store: ModelStore, spec: dict, model: nets.CertifiedLinear, head: Head, ids: np.ndarray, *,
          noise_seed: int, retrained: bool, extra: dict | None = None) -> str:
    budget = Strategy(**spec["strategy"]).budget
    state = store.put_blob(st_save({"anchor": head.anchor.cpu().contiguous(),
                                    "hessian": head.hessian.cpu().contiguous()}))
    info = {**_info(spec, ids), "certified": {
        "state": state, "n": head.n, "bound": head.bound, "removals": head.removals,
        "noise_seed": noise_seed, "retrained": retrained, "budget": budget.residual_budget, **(extra or {}),
    }}
    return store.put_blob(_dumps(model, head.weights, info))


def _save_gd(store: ModelStore, spec: dict, model: nets.CertifiedLinear, weights: torch.Tensor,
             trajectory: deltagrad.Trajectory, ids: np.ndarray, *, retrained: bool, extra: dict | None = None) -> str:
    """A gd head: its weights, and its trajectory (every step's weights and gradient, a
    blob of ``2 x iterations x d x K`` float64) for the next DeltaGrad removal."""
    info = {**_info(spec, ids), "deltagrad": {"trajectory": trajectories.save(store, trajectory), "n": trajectory.n, "replays": trajectory.replays,
                                              "retrained": retrained, **(extra or {})}}
    return store.put_blob(_dumps(model, weights, info))


def _train_gd(spec: dict, model: nets.CertifiedLinear, phi: torch.Tensor, y: torch.Tensor, ids: np.ndarray, *,
              store: ModelStore, retrained: bool, extra: dict | None = None) -> str:
    schedule = trajectories.schedule(Strategy(**spec["strategy"]))
    weights, trajectory = deltagrad.train(phi, certified.signs(y, spec["num_classes"]), schedule)
    return _save_gd(store, spec, model, weights, trajectory, ids, retrained=retrained, extra=extra)


def train_head(plan: Plan, entry: ShardPlan, *, store: ModelStore, ds: Dataset, device: torch.device,
               progress) -> list[str]:
    """Train the head from scratch on the entry's rows (a new model, or an exact removal)."""
    spec = plan.spec
    ids = get_ids(store, entry.slices[0])
    model = head_model(spec, store, device)
    phi, y = _features(model, device_data(ds, device), ids)
    if Strategy(**spec["strategy"]).trainer == "gd":
        progress(f"training the linear head by gradient descent on {len(ids)} samples")
        return [_train_gd(spec, model, phi, y, ids, store=store, retrained=plan.parent is not None)]
    seed = _noise_seed(spec, plan.parent)
    progress(f"training the certified linear head on {len(ids)} samples")
    head = certified.fit(phi, y, spec["num_classes"], Strategy(**spec["strategy"]).budget, seed=seed)
    return [_save(store, spec, model, head, ids, noise_seed=seed, retrained=plan.parent is not None)]


def unlearn_head(plan: Plan, entry: ShardPlan, forget: tuple[torch.Tensor, torch.Tensor], *, store: ModelStore,
                 ds: Dataset, device: torch.device, progress) -> str:
    """Remove the forget rows ``(x, y)`` (model inputs) with the plan's method: DeltaGrad
    (``deltagrad``) or certified removal; return the new weights."""
    if plan.method.name == "deltagrad":
        return _replay_head(plan, entry, forget, store=store, ds=ds, device=device, progress=progress)
    return _certified_step(plan, entry, forget, store=store, ds=ds, device=device, progress=progress)


def _replay_head(plan: Plan, entry: ShardPlan, forget: tuple[torch.Tensor, torch.Tensor], *, store: ModelStore,
                 ds: Dataset, device: torch.device, progress) -> str:
    """Replay a gd head's training without the forget rows (DeltaGrad); retrain it by
    gradient descent when its parent has no trajectory to replay (another method's
    weights, or a solver head)."""
    spec = plan.spec
    ids = np.concatenate([get_ids(store, k) for k in entry.slices])
    model = head_model(spec, store, device)
    phi, y = _features(model, device_data(ds, device), ids)
    parent = checkpoints.loads(store.get_blob(entry.parent_weights))
    strategy = Strategy(**spec["strategy"])
    if strategy.trainer != "gd":
        raise ModelError("deltagrad runs on linear models trained with trainer 'gd'")
    why = trajectories.must_retrain(plan, entry, parent.info, ids, store=store)
    if why is not None:
        progress(f"{why[0]}: retraining the linear head by gradient descent")
        return _train_gd(spec, model, phi, y, ids, store=store, retrained=True, extra=why[1])
    trajectory = trajectories.load(store, parent.info["deltagrad"], device)
    k = spec["num_classes"]
    replay = deltagrad.remove(trajectory, phi, certified.signs(y, k), model.phi(forget[0]),
                              certified.signs(forget[1], k), trajectories.schedule(strategy, plan.method.config))
    progress(f"DeltaGrad removal of {len(forget[1])} samples: {replay.exact_steps} exact and "
             f"{replay.approximate_steps} approximated steps of {len(trajectory.weights)}")
    return _save_gd(store, spec, model, replay.weights, replay.trajectory, ids, retrained=False,
                    extra={"exact_steps": replay.exact_steps, "approximate_steps": replay.approximate_steps})


def _certified_step(plan: Plan, entry: ShardPlan, forget: tuple[torch.Tensor, torch.Tensor], *, store: ModelStore,
                    ds: Dataset, device: torch.device, progress) -> str:
    """Remove the forget rows by one Newton step, or retrain with fresh noise when the
    step would exhaust the budget."""
    spec = plan.spec
    budget = Strategy(**spec["strategy"]).budget
    ids = np.concatenate([get_ids(store, k) for k in entry.slices])
    model = head_model(spec, store, device)
    phi, y = _features(model, device_data(ds, device), ids)
    parent = checkpoints.loads(store.get_blob(entry.parent_weights))
    state = parent.info.get("certified")
    phi_gone = model.phi(forget[0])
    seed = _noise_seed(spec, plan.parent)
    if state is not None:
        blob = st_load(store.get_blob(state["state"]))
        head = Head(weights=parent.model_state["weight"].T.to(device, torch.float64),
                    anchor=blob["anchor"].to(device), hessian=blob["hessian"].to(device), n=state["n"],
                    bound=state["bound"], removals=state["removals"])
        after, added = certified.remove(head, phi, phi_gone, forget[1], budget.l2)
        progress(f"certified removal of {len(phi_gone)} samples: bound +{added:.4g}, "
                 f"{after.bound:.4g} of {budget.residual_budget:.4g}")
        if after.bound <= budget.residual_budget:
            return _save(store, spec, model, after, ids, noise_seed=state["noise_seed"], retrained=False,
                         extra={"step_bound": added})
        would = {"exhausted_bound": after.bound}
    else:  # weights another method left: nothing to take a certified step from
        would = {"no_certified_state": True}
    progress("the removal would exceed the certified budget: retraining the head with fresh noise")
    head = certified.fit(phi, y, spec["num_classes"], budget, seed=seed)
    return _save(store, spec, model, head, ids, noise_seed=seed, retrained=True, extra=would)


def head_metrics(store: ModelStore, weights: str, strategy: dict) -> dict:
    """What a linear version's metrics say of its head: ``certified`` (a solver head's
    accumulated residual bound against its budget, and whether the head was retrained,
    the budget reset) or ``deltagrad`` (a gd head, or a network of the gd kind, replayed
    by DeltaGrad, with its exact and approximated steps, or retrained). Empty for other
    kinds, and for weights another method left."""
    if strategy.get("kind") not in ("linear", "gd"):
        return {}
    info = checkpoints.loads(store.get_blob(weights)).info
    out = {}
    if info.get("certified") is not None:
        out["certified"] = _certificate(info["certified"], Strategy(**strategy).budget)
    if info.get("deltagrad") is not None:
        out["deltagrad"] = {k: v for k, v in info["deltagrad"].items() if k != "trajectory"}
    return out


def _certificate(info: dict, budget: certified.Budget) -> dict:
    out = {
        "epsilon": budget.epsilon, "delta": budget.delta, "noise": budget.noise, "l2": budget.l2,
        "residual_bound": round(info["bound"], 8), "budget": round(budget.residual_budget, 8),
        "budget_left": round(max(0.0, budget.residual_budget - info["bound"]), 8),
        "removals_since_training": info["removals"], "retrained": info["retrained"],
        "certified": info["bound"] <= budget.residual_budget,
    }
    for key in ("step_bound", "exhausted_bound"):
        if key in info:
            out[key] = round(info[key], 8)
    if info.get("no_certified_state"):
        out["no_certified_state"] = True  # retrained: the parent's weights came from another method
    return out
