"""RL: relabel the forget set at random (Golatkar et al.'s baseline), trained next to the
retain set; the random-label term is on only while the forget set still looks seen."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import (
    ForgetMonitor,
    Split,
    checks,
    forget_while_healing,
    generator,
    num_classes,
    optimizer,
    random_other_labels,
)

LR = 2e-3  # at the reference recipe (Adam, 3e-3)


@dataclass(frozen=True)
class Config:
    retain_epochs: float = 1.0  # passes over the retain set; forget batches ride along while needed
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    optimizer: str = "sgd"
    batch_size: int = 128
    check_every: int = 5  # steps between looks at the forget set
    seed: int = 0


def relabel(model, forget: Split, retain: Split, cfg, heldout, mask=None):
    """Shared by RL and SalUn (which passes a weight mask)."""
    gen = generator(cfg.seed)
    k = num_classes(model, forget)
    opt = optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    steps = max(1, round(cfg.retain_epochs * len(retain) / cfg.batch_size))
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=checks(steps, cfg.check_every))

    def loss(m, x, y):
        return F.cross_entropy(m(x), random_other_labels(y, k, gen))

    forget_while_healing(model, opt, forget, retain, monitor, steps=steps, batch_size=cfg.batch_size,
                         gen=gen, forget_loss=loss, mask=mask)
    return model


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    return relabel(model, forget, retain, cfg, heldout)
