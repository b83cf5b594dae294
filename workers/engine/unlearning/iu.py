"""IU, influence unlearning (Koh & Liang; Izzo et al.): one Newton step that removes the
forget set's first-order influence, theta += H^-1 (n_f / n_r) grad L_f, with H the damped
Hessian of the retain loss, solved by conjugate gradient on Hessian-vector products.

At the optimum the retain gradient is minus the forget gradient (the seed's Proposition
1), so the step needs only the forget set's gradient and Hessian-vector products on a
retain sample; H is never formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.engine.unlearning.base import Split, generator


@dataclass(frozen=True)
class Config:
    damping: float = 0.01  # lambda in (H + lambda I)
    cg_iters: int = 10
    scale: float = 1.0  # multiplies the Newton step
    retain_samples: int = 512  # rows of the retain set the Hessian is taken on
    max_norm: float = 2.0  # the step is clipped to this L2 norm (a non-convex net's H can mislead)
    seed: int = 0


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    forget_loss = F.cross_entropy(model(forget.x), forget.y)
    g = _flat(torch.autograd.grad(forget_loss, params)).detach() * (len(forget) / max(len(retain), 1))
    sample = retain.sample(cfg.retain_samples, gen)
    retain_grads = torch.autograd.grad(F.cross_entropy(model(sample.x), sample.y), params, create_graph=True)
    flat_grads = _flat(retain_grads)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat_grads @ v, params, retain_graph=True)
        return _flat(hv).detach() + cfg.damping * v

    # Conjugate gradient on (H + lambda I) x = g; stop at negative curvature.
    x = torch.zeros_like(g)
    r = g.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(cfg.cg_iters):
        hp = hvp(p)
        curvature = p @ hp
        if curvature <= 0:
            break
        a = rs / curvature
        x += a * p
        r -= a * hp
        rs_new = r @ r
        if rs_new.sqrt() < 1e-8:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    delta = cfg.scale * x
    norm = delta.norm()
    if norm > cfg.max_norm:
        delta *= cfg.max_norm / norm
    with torch.no_grad():
        offset = 0
        for param in params:
            n = param.numel()
            param.add_(delta[offset : offset + n].view_as(param))
            offset += n
    return model
