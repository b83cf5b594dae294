"""ℓ1-sparse (Liu et al., NeurIPS 2023): fine-tune on the retain set with an ℓ1 penalty
on the weights that decays linearly to zero; sparsity makes forgetting easier."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import Split, generator, sgd, step

LR = 0.01  # SGD, at the reference recipe (Adam, 3e-3)


@dataclass(frozen=True)
class Config:
    epochs: float = 0.5  # passes over the retain set
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    l1: float = 5e-5  # penalty at the first step
    batch_size: int = 128
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    optimizer = sgd(model.parameters(), cfg.lr)
    total = max(1, int(cfg.epochs * len(retain) / cfg.batch_size))
    model.train()
    for i, (x, y) in enumerate(retain.batches(cfg.batch_size, gen, cfg.epochs)):
        gamma = cfg.l1 * max(0.0, 1.0 - i / total)
        penalty = sum(p.abs().sum() for p in model.parameters())
        step(model, optimizer, F.cross_entropy(model(x), y) + gamma * penalty)
    return model
