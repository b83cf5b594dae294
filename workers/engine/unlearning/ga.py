"""GA: gradient ascent on the forget set's loss (Thudi et al.), next to plain training on
the retain set (as NegGrad+ does); the ascent term is on only while the forget set still
looks seen, so it stops where unseen data sits rather than at zero accuracy."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import ForgetMonitor, Split, forget_while_healing, generator, sgd


@dataclass(frozen=True)
class Config:
    retain_epochs: float = 1.0  # passes over the retain set; forget batches ride along while needed
    lr: float = 1e-2
    momentum: float = 0.0  # momentum would carry ascent past the stopping point
    ascent: float = 1.0  # weight of the ascent term
    batch_size: int = 128
    check_every: int = 5
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    optimizer = sgd(model.parameters(), cfg.lr, momentum=cfg.momentum)
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=cfg.check_every)

    def loss(m, x, y):
        logits = m(x)
        # Ascend only on rows still predicted right: a row already forgotten has an
        # unbounded loss whose gradient would wreck the rest of the model.
        right = logits.argmax(1) == y
        if not right.any():
            return logits.sum() * 0.0
        return -cfg.ascent * F.cross_entropy(logits[right], y[right])

    steps = max(1, round(cfg.retain_epochs * len(retain) / cfg.batch_size))
    forget_while_healing(model, optimizer, forget, retain, monitor, steps=steps, batch_size=cfg.batch_size,
                         gen=gen, forget_loss=loss)
    return model
