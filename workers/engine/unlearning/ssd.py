"""SSD (Foster et al., AAAI 2024): selective synaptic dampening. Weights far more
important to the forget set than to the training data (Fisher ratio above ``alpha``)
are shrunk towards zero in proportion; no training at all."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.unlearning.base import Split, generator
from workers.engine.unlearning.importance import diag_fisher


@dataclass(frozen=True)
class Config:
    alpha: float = 10.0  # selection: forget importance above alpha x data importance
    dampening: float = 1.0  # lambda: the weight is scaled by min(lambda * I_D / I_f, 1)
    retain_samples: int = 4096  # rows that estimate the training data's importance
    seed: int = 0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    data_importance = diag_fisher(model, retain.sample(cfg.retain_samples, gen))
    forget_importance = diag_fisher(model, forget)
    with torch.no_grad():
        for p in model.parameters():
            i_d, i_f = data_importance[p], forget_importance[p]
            selected = i_f > cfg.alpha * i_d
            scale = (cfg.dampening * i_d / (i_f + 1e-12)).clamp(max=1.0)
            p.mul_(torch.where(selected, scale, torch.ones_like(scale)))
    return model
