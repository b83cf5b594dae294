"""Fisher forgetting (Golatkar et al., CVPR 2020): add Gaussian noise to each weight with
variance inversely proportional to its Fisher information on the retain set, so weights
the retain set does not need are scrambled and those it does are kept."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.unlearning.base import Split, generator
from workers.engine.unlearning.importance import diag_fisher


@dataclass(frozen=True)
class Config:
    noise: float = 1e-5  # alpha: noise std is alpha * Fisher^(-1/2)
    max_std: float = 1.0  # no weight gets more noise than this (the clamp in the paper's code)
    retain_samples: int = 2048  # rows of the retain set that estimate the Fisher
    seed: int = 0


@torch.no_grad()
def _perturb(model, fisher: dict, cfg: Config, gen: torch.Generator) -> None:
    for p in model.parameters():
        std = (cfg.noise / (fisher[p] + 1e-8).sqrt()).clamp(max=cfg.max_std)
        p.add_(std * torch.randn(p.shape, generator=gen).to(p.device))


@torch.no_grad()
def _drop_lost_classes(model, forget: Split, retain: Split) -> None:
    """Zero the output weights of classes the retain set no longer holds, as the authors'
    code does for class forgetting: the retain Fisher says nothing about those rows."""
    lost = sorted(set(torch.unique(forget.y).tolist()) - set(torch.unique(retain.y).tolist()))
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not lost or not heads:
        return
    head = heads[-1]
    head.weight[lost] = 0.0
    if head.bias is not None:
        head.bias[lost] = head.bias.min() - 10.0


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    fisher = diag_fisher(model, retain.sample(cfg.retain_samples, gen))
    _perturb(model, fisher, cfg, gen)
    _drop_lost_classes(model, forget, retain)
    return model
