"""SalUn (Fan et al., ICLR 2024): random labelling restricted to the salient weights,
those where the forget loss's gradient at the original model is largest."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.engine.unlearning.base import Split

LR = 2e-3  # at the reference recipe (Adam, 3e-3)
from workers.engine.unlearning.rl import relabel

@dataclass(frozen=True)
class Config:
    saliency: float = 0.5  # fraction of weights that may change (the top |gradient|)
    retain_epochs: float = 1.0  # passes over the retain set; forget batches ride along while needed
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    optimizer: str = "sgd"
    batch_size: int = 128
    check_every: int = 5
    seed: int = 0

def saliency_mask(model, forget: Split, fraction: float, batch_size: int = 256) -> dict:
    """param -> 0/1 mask of the ``fraction`` of weights with the largest |grad of forget loss|."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for i in range(0, len(forget), batch_size):
        x, y = forget.x[i : i + batch_size], forget.y[i : i + batch_size]
        (F.cross_entropy(model(x), y, reduction="sum") / len(forget)).backward()
    grads = {p: p.grad.abs() for p in model.parameters() if p.grad is not None}
    flat = torch.cat([g.flatten() for g in grads.values()])
    keep = max(1, int(round(fraction * len(flat))))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    model.zero_grad(set_to_none=True)
    return {p: (g >= threshold).to(p.dtype) for p, g in grads.items()}

def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    mask = saliency_mask(model, forget, cfg.saliency)
    return relabel(model, forget, retain, cfg, heldout, mask)
