"""FT: fine-tune on the retain set only, so the forget set fades by catastrophic forgetting."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import Split, generator, sgd, step

LR = 0.01  # SGD, at the reference recipe (Adam, 3e-3)


@dataclass(frozen=True)
class Config:
    epochs: float = 0.5  # passes over the retain set
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    batch_size: int = 128
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    optimizer = sgd(model.parameters(), cfg.lr)
    model.train()
    for x, y in retain.batches(cfg.batch_size, gen, cfg.epochs):
        step(model, optimizer, F.cross_entropy(model(x), y))
    return model
