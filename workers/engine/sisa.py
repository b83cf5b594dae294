"""SISA (Bourtoule et al.): Sharded, Isolated, Sliced, Aggregated training.

The training data is split into S shards, and each shard into R slices. One
constituent model per shard trains slice by slice: step r trains on slices 0..r and
saves a checkpoint. To unlearn, a touched shard restarts from the checkpoint before
its earliest touched slice, on its data minus the erased samples; every other
constituent is reused as it is.

Shards and slices are cut along owners (all of an owner's samples land in one shard
and one slice), so deleting one owner retrains one constituent from one slice.
A monolithic model is the case S = R = 1.
"""
from __future__ import annotations

import dataclasses
import heapq
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workers.engine import checkpoints, nets, placement
from workers.engine.certified import Budget
from workers.engine.digests import ids_digest
from workers.engine.placement import PARTITIONS
from workers.engine.registry import Registry
from workers.engine.training import (
    DeviceData,
    TrainConfig,
    derive_seed,
    make_optimizer,
    predict_proba,
    train_epochs,
)

Progress = Callable[..., None]  # progress(message, state=None): a line, and/or a shard's structured state
# constituents x rows x classes -> rows x classes
Aggregation = Callable[[torch.Tensor], torch.Tensor]
AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")


@AGGREGATIONS.register("mean_softmax")
def mean_softmax(probs: torch.Tensor) -> torch.Tensor:
    return probs.mean(0)


@AGGREGATIONS.register("vote")
def vote(probs: torch.Tensor) -> torch.Tensor:
    """Vote shares: each constituent gives one vote to its top class."""
    return torch.nn.functional.one_hot(probs.argmax(2), probs.shape[2]).float().mean(0)


KINDS = ("sisa", "monolithic", "linear", "gd")
DEFAULT_HOLDOUT = 0.02
TRAINERS = ("solver", "gd")  # how a linear head is trained


@dataclass(frozen=True)
class Strategy:
    kind: str = "sisa"  # "sisa" | "monolithic" | "linear" | "gd" (a network trained by full-batch gradient descent)
    shards: int = 1
    slices: int = 1
    aggregation: str = "mean_softmax"
    partition: str = "balanced"  # how owners are placed in shards: placement.PARTITIONS
    # sisa, monolithic: the share of rows (whole owners) kept out of training, so an
    # approximate method's stopping rule has rows the model never saw that are not the
    # test split; None: DEFAULT_HOLDOUT on one shard (more shards see each other's rows
    # as unseen), else 0
    holdout: float | None = None
    # linear: certified removal's settings (certified.Budget; its defaults where None)
    epsilon: float | None = None
    delta: float | None = None
    noise: float | None = None
    l2: float | None = None
    # linear: "solver" (the exact minimiser, what certified removal needs) or "gd"
    # (full-batch gradient descent whose trajectory DeltaGrad replays; no noise, no certificate)
    trainer: str | None = None
    iterations: int | None = None  # gd (the trainer, or the kind): steps
    lr: float | None = None  # gd: step size

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"strategy kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "sisa" and (self.shards, self.slices) != (1, 1):
            raise ValueError(f"a {self.kind} model has exactly one shard and one slice")
        if self.kind == "linear":
            given = {k: v for k, v in self._budget_fields().items() if v is not None}
            for key, value in dataclasses.asdict(Budget(**given)).items():
                object.__setattr__(self, key, value)
            trainer = self.trainer or "solver"
            if trainer not in TRAINERS:
                raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}")
            gd = {"iterations": 300, "lr": 4.0} if trainer == "gd" else {}
            if trainer != "gd" and (self.iterations is not None or self.lr is not None):
                raise ValueError("iterations and lr are settings of the gd trainer")
            for key, default in gd.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, default)
            if trainer == "gd" and not (self.iterations >= 1 and 0 < self.lr < 8):
                raise ValueError("gd needs iterations >= 1 and 0 < lr < 8 (the rows have unit norm)")
            object.__setattr__(self, "trainer", trainer)
        elif self.kind == "gd":
            if any(v is not None for v in (self.epsilon, self.delta, self.noise, self.trainer)):
                raise ValueError("epsilon, delta, noise and trainer are settings of the linear kind only")
            # lr 0.1: at 0.5 full-batch descent on an MLP was chaotic (removing 20 of 1,437
            # digits rows moved the weights 33%) and DeltaGrad's replay diverged
            for key, default in {"iterations": 300, "lr": 0.1, "l2": 1e-4}.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, default)
            if not (self.iterations >= 1 and self.lr > 0 and self.l2 >= 0):
                raise ValueError("the gd kind needs iterations >= 1, lr > 0 and l2 >= 0")
        elif any(v is not None for v in (*self._budget_fields().values(), self.trainer, self.iterations, self.lr)):
            raise ValueError("epsilon, delta, noise, l2, trainer, iterations and lr are settings of the linear and "
                             "gd kinds only")
        if self.shards < 1 or self.slices < 1:
            raise ValueError("shards and slices must be >= 1")
        if self.holdout is None:
            one_shard = self.kind in ("sisa", "monolithic") and self.shards == 1
            object.__setattr__(self, "holdout", DEFAULT_HOLDOUT if one_shard else 0.0)
        if not 0 <= self.holdout < 0.5:
            raise ValueError(f"holdout must be in [0, 0.5), got {self.holdout}")
        if self.holdout and self.kind not in ("sisa", "monolithic"):
            raise ValueError(f"a {self.kind} model keeps no rows out of training: holdout applies to the sisa and "
                             "monolithic kinds")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.partition != "balanced" and self.kind != "sisa":
            raise ValueError(f"a {self.kind} model has one shard: partition applies to the sisa kind only")
        AGGREGATIONS.get(self.aggregation)  # ValueError naming the choices

    def _budget_fields(self) -> dict:
        return {"epsilon": self.epsilon, "delta": self.delta, "noise": self.noise, "l2": self.l2}

    @property
    def budget(self) -> Budget:
        """The linear kind's certification settings."""
        return Budget(**self._budget_fields())

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "shards": self.shards, "slices": self.slices, "aggregation": self.aggregation}
        if self.partition != "balanced":  # records written before partitions existed stay as they were
            out["partition"] = self.partition
        if self.holdout:  # likewise for records before held-out rows
            out["holdout"] = self.holdout
        if self.kind == "gd":
            return {**out, "iterations": self.iterations, "lr": self.lr, "l2": self.l2}
        if self.kind != "linear":
            return out
        out = {**out, **self._budget_fields()}
        if self.trainer == "gd":  # solver records stay as they were before trainers existed
            out.update(trainer=self.trainer, iterations=self.iterations, lr=self.lr)
        return out


def _balanced_groups(sizes: dict[str, int], k: int) -> list[list[str]]:
    """Split keys into ``k`` groups of near-equal total size (largest first, to the lightest)."""
    heap = [(0, i) for i in range(k)]
    groups: list[list[str]] = [[] for _ in range(k)]
    for key in sorted(sizes, key=lambda o: (-sizes[o], o)):
        load, i = heapq.heappop(heap)
        groups[i].append(key)
        heapq.heappush(heap, (load + sizes[key], i))
    return groups


def _sorted(ids: np.ndarray) -> np.ndarray:
    ids.sort()  # in place: a copy of millions of ids is what a sort would add
    return ids


def partition(owner_of: dict[int, str], shards: int, slices: int) -> list[list[np.ndarray]]:
    """:func:`partition_owners` of a ``sample id -> owner id`` mapping."""
    names = sorted(set(owner_of.values()))
    code = {o: i for i, o in enumerate(names)}
    ids = np.fromiter(owner_of.keys(), dtype=np.int64, count=len(owner_of))
    codes = np.fromiter((code[o] for o in owner_of.values()), dtype=np.int32, count=len(owner_of))
    return partition_owners(ids, codes, names, shards, slices)


def partition_owners(sample_ids: np.ndarray, owner_codes: np.ndarray, owner_names: list[str], shards: int,
                     slices: int, order: np.ndarray | None = None) -> list[list[np.ndarray]]:
    """Sample ids per shard per slice, cut along owners, balanced by sample count.
    Sample ``i`` belongs to ``owner_names[owner_codes[i]]``; arrays, not a dict per row,
    so a dataset of millions of rows is cut in little memory. With ``order`` (owner
    codes, see ``placement``), shards are contiguous runs of it instead of a balanced mix.

    Deterministic: the same ledger gives the same partition.
    """
    counts = np.bincount(owner_codes, minlength=len(owner_names))
    sizes = {owner_names[c]: int(n) for c, n in enumerate(counts) if n}
    if len(sizes) < shards * slices:
        raise ValueError(
            f"cannot cut {len(sample_ids)} samples of {len(sizes)} owners into {shards} shards x "
            f"{slices} slices: SISA here needs at least shards x slices = {shards * slices} owners"
        )
    code = {o: i for i, o in enumerate(owner_names)}
    group_of = np.empty(len(owner_names), dtype=np.int32)
    result = []
    if order is None:
        shard_groups = _balanced_groups(sizes, shards)
    else:
        held = order[counts[order] > 0]
        shard_groups = [[owner_names[c] for c in run] for run in placement.contiguous_groups(held, counts, shards, slices)]
    for shard_owners in shard_groups:
        groups = _balanced_groups({o: sizes[o] for o in shard_owners}, slices)
        group_of.fill(-1)
        for g, group in enumerate(groups):
            group_of[[code[o] for o in group]] = g
        member = group_of[owner_codes]
        result.append([_sorted(sample_ids[member == g]) for g in range(len(groups))])
    return result


def train_constituent(
    *,
    architecture: str,
    input_shape: list[int],
    num_classes: int,
    cfg: TrainConfig,
    architecture_params: dict | None = None,
    shard: int,
    slice_ids: list[np.ndarray],
    data: DeviceData,
    start_slice: int = 0,
    start_checkpoint: bytes | None = None,
    init_state: dict | None = None,
    progress: Progress | None = None,
) -> list[bytes]:
    """Train shard ``shard`` from slice ``start_slice`` to the last; return the new checkpoints.

    ``start_checkpoint`` is the checkpoint after slice ``start_slice - 1`` (None when
    starting from scratch). Seeds depend only on (seed, shard, slice), so retraining
    from a checkpoint gives exactly what training from scratch on the same slices gives.
    ``init_state`` (a pretrained backbone's weights) is loaded over the seeded initial
    weights before the first slice; the keys it lacks (a new head) keep theirs.
    """
    model = nets.build(architecture, input_shape, num_classes, seed=derive_seed(cfg.seed, shard, "init"),
                       params=architecture_params)
    if init_state is not None and start_checkpoint is None:
        model.load_state_dict(init_state, strict=False)
    model.to(data.device)
    optimizer = make_optimizer(model, cfg)
    if start_checkpoint is not None:
        ckpt = checkpoints.loads(start_checkpoint)
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optim_state)
    out = []
    epochs = cfg.step_epochs(len(slice_ids))
    clock = _Clock(slice_ids, start_slice, epochs, shard, progress)
    for r in range(start_slice, len(slice_ids)):
        seen = slice_ids[0] if r == 0 else np.concatenate(slice_ids[: r + 1])
        if len(seen):
            loss = train_epochs(
                model, optimizer, data, data.rows(seen), cfg,
                epochs=epochs, seed=derive_seed(cfg.seed, shard, r), on_epoch=clock.at(r, len(seen)),
            )
        else:
            loss = float("nan")
        if progress:
            progress(f"shard {shard} slice {r}: trained on {len(seen)} samples, last batch loss {loss:.4f}")
        info = {
            "architecture": architecture,
            **({"architecture_params": architecture_params} if architecture_params else {}),
            "input_shape": input_shape,
            "num_classes": num_classes,
            "shard": shard,
            "slice": r,
            "samples_seen": int(len(seen)),
            "manifest_digest": ids_digest(seen),
            "recipe": cfg.to_dict(),
        }
        out.append(checkpoints.dumps(model, optimizer, info))
    return out


class _Clock:
    """A shard's structured progress after each epoch: slice and epoch, samples/s so far
    (host time: on a GPU it runs ahead of the device by the queued work) and the ETA of
    the samples left in this shard's remaining slices."""

    def __init__(self, slice_ids: list[np.ndarray], start: int, epochs: int, shard: int, progress: Progress | None):
        self.sizes = np.cumsum([len(s) for s in slice_ids])  # slice r trains on sizes[r] rows
        self.start, self.epochs, self.shard, self.progress = start, epochs, shard, progress
        self.total = int(self.sizes[start:].sum()) * epochs
        self.done, self.began = 0, time.perf_counter()

    def at(self, r: int, rows: int):
        if self.progress is None:
            return None

        def on_epoch(epoch: int) -> None:
            self.done += rows
            rate = self.done / max(time.perf_counter() - self.began, 1e-9)
            self.progress(None, {"phase": "training", "shard": self.shard, "slice": r, "slices": len(self.sizes),
                                 "epoch": epoch, "epochs": self.epochs, "samples_done": self.done,
                                 "samples_total": self.total, "samples_per_s": round(rate, 1),
                                 "eta_s": round((self.total - self.done) / rate, 1)})
        return on_epoch


def first_touched_slices(slice_ids: list[list[np.ndarray]], removed: np.ndarray) -> dict[int, int]:
    """shard -> earliest slice that holds any removed sample id (untouched shards absent)."""
    touched = {}
    for shard, slices in enumerate(slice_ids):
        for r, ids in enumerate(slices):
            if np.isin(ids, removed).any():
                touched[shard] = r
                break
    return touched


def aggregate(probs: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Combine constituent probabilities (constituents x rows x classes) into one row each."""
    return AGGREGATIONS.get(aggregation)(probs)


class Ensemble:
    """Constituent models that predict together by mean softmax (default) or majority vote.

    Mean softmax is the default: it returns class probabilities (what the predict API
    and the verification metrics need), uses each constituent's confidence and has no
    ties; vote returns the vote shares.
    """

    def __init__(self, models: list[torch.nn.Module], aggregation: str = "mean_softmax"):
        if not models:
            raise ValueError("an ensemble needs at least one constituent")
        self.models = models
        self.aggregation = aggregation

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return aggregate(torch.stack([predict_proba(m, x) for m in self.models]), self.aggregation)


def load_constituent(data: bytes, device) -> torch.nn.Module:
    ckpt = checkpoints.loads(data)
    info = ckpt.info
    model = nets.build(info["architecture"], info["input_shape"], info["num_classes"], seed=0,
                       params=info.get("architecture_params"))
    model.load_state_dict(ckpt.model_state)
    return model.to(device).eval()
