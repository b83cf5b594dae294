"""GA: gradient ascent on the forget set's loss (Thudi et al.), stopped once the forget
set looks like held-out data, or after ``epochs``."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import ForgetMonitor, Split, generator, repair, sgd, step


@dataclass(frozen=True)
class Config:
    epochs: float = 5.0  # passes over the forget set, at most
    lr: float = 1e-2
    momentum: float = 0.0  # momentum carries ascent past the stopping point
    repair_steps: int = 0  # retain-only steps after forgetting
    batch_size: int = 128
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    optimizer = sgd(model.parameters(), cfg.lr, momentum=cfg.momentum)
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=1)
    model.train()
    for x, y in forget.batches(cfg.batch_size, gen, cfg.epochs):
        logits = model(x)
        # Ascend only on rows still predicted right: a row already forgotten has an
        # unbounded loss whose gradient would wreck the rest of the model.
        right = logits.argmax(1) == y
        if not right.any():
            continue
        step(model, optimizer, -F.cross_entropy(logits[right], y[right]))
        if monitor.done():
            break
    repair(model, optimizer, retain, cfg.repair_steps, cfg.batch_size, gen)
    return model
