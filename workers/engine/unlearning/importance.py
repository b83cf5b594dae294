"""Diagonal Fisher information, shared by Fisher forgetting and SSD."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from workers.engine.unlearning.base import Split


def diag_fisher(model, split: Split, chunk: int = 256) -> dict:
    """param -> mean over rows of the squared per-sample gradient of the loss (the
    empirical Fisher diagonal). Per-sample, not per-batch: batch gradients cancel across
    rows and would make weights every row uses look unimportant."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(0, len(split), chunk):
        grads = per_sample(params, split.x[i : i + chunk], split.y[i : i + chunk])
        for k, g in grads.items():
            total[k] += (g**2).sum(0)
    n = max(len(split), 1)
    by_name = {k: v / n for k, v in total.items()}
    return {p: by_name[k] for k, p in model.named_parameters()}
