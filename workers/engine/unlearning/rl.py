"""RL: relabel the forget set at random and train on it together with the retain set
(Golatkar et al.'s baseline), stopped once the forget set looks like held-out data."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.engine.unlearning.base import (
    ForgetMonitor,
    Split,
    generator,
    num_classes,
    random_other_labels,
    repair,
    sgd,
    step,
)


@dataclass(frozen=True)
class Config:
    epochs: float = 3.0  # passes over the forget set, at most; each forget batch meets a retain batch
    lr: float = 2e-3
    repair_steps: int = 0  # retain-only steps after forgetting
    batch_size: int = 128
    seed: int = 0


def relabel_steps(model, forget: Split, retain: Split, cfg, heldout, mask=None):
    """Shared by RL and SalUn: forget batches with random labels, each next to a retain batch."""
    gen = generator(cfg.seed)
    k = num_classes(model, forget)
    optimizer = sgd(model.parameters(), cfg.lr)
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=1)
    retain_batches = retain.cycle(cfg.batch_size, gen)
    model.train()
    for x, y in forget.batches(cfg.batch_size, gen, cfg.epochs):
        xr, yr = next(retain_batches)
        inputs = torch.cat([x, xr])
        targets = torch.cat([random_other_labels(y, k, gen), yr])
        step(model, optimizer, F.cross_entropy(model(inputs), targets), mask)
        if monitor.done():
            break
    repair(model, optimizer, retain, cfg.repair_steps, cfg.batch_size, gen)
    return model


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    return relabel_steps(model, forget, retain, cfg, heldout)
