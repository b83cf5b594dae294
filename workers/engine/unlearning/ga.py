"""GA: gradient ascent on the forget set's loss (Thudi et al.), next to plain training on
the retain set (as NegGrad+ does); the ascent term is on only while the forget set still
looks seen, so it stops where unseen data sits rather than at zero accuracy."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import ForgetMonitor, Split, checks, forget_while_healing, generator, optimizer

LR = 2e-3  # at the reference recipe (Adam, 3e-3), chosen on the validation split


@dataclass(frozen=True)
class Config:
    retain_epochs: float = 1.0  # passes over the retain set; forget batches ride along while needed
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    optimizer: str = "adam"  # as the model was trained; SGD from a converged Adam model costs retain accuracy
    momentum: float = 0.0  # SGD only: momentum would carry ascent past the stopping point
    ascent: float = 1.0  # weight of the ascent term
    batch_size: int = 256
    forget_batch_size: int = 256  # rows of the forget set per step (the ascent term is weighted per row)
    check_every: int = 5
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    opt = optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum)
    steps = max(1, round(cfg.retain_epochs * len(retain) / cfg.batch_size))
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=checks(steps, cfg.check_every))

    def loss(m, x, y):
        logits = m(x)
        # Ascend only on rows still predicted right: a row already forgotten has an
        # unbounded loss whose gradient would wreck the rest of the model.
        right = logits.argmax(1) == y
        if not right.any():
            return logits.sum() * 0.0
        return -cfg.ascent * F.cross_entropy(logits[right], y[right])

    forget_while_healing(model, opt, forget, retain, monitor, steps=steps, batch_size=cfg.batch_size,
                         gen=gen, forget_loss=loss, forget_batch_size=cfg.forget_batch_size)
    return model
