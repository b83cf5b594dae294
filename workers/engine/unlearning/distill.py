"""Influence distillation (seed 001's own method): the parent is the teacher; a student
of the same architecture learns the retain set from it by logit matching (KL at a
temperature, next to cross-entropy on the labels), and is pushed away from the forget
set by gradient ascent weighted per row by an influence: the teacher's negative loss
on the row, taken as ``exp(-loss)`` (the teacher's probability of the true label), so
the rows the teacher fits best — the memorised ones — weigh most. The seed uses the
teacher's loss instead of a Hessian-based influence because the Hessian is costly.

The ascent is on only while the forget set still looks seen (as in GA), and only on
rows still predicted right. ``init="teacher"`` (the default) starts the student from
the teacher's weights; ``init="fresh"`` from new weights (a true distillation, which
keeps nothing of the teacher's weights but costs about a retraining of the shard).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.engine.unlearning.base import ForgetMonitor, Split, checks, forget_while_healing, generator, optimizer

LR = 2e-3  # at the reference recipe (Adam, 3e-3)


@dataclass(frozen=True)
class Config:
    epochs: float = 1.0  # passes over the retain set
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    optimizer: str = "adam"
    batch_size: int = 256
    forget_batch_size: int = 256
    temperature: float = 4.0
    alpha: float = 0.5  # weight of logit matching; 1 - alpha goes to cross-entropy on the labels
    influence: float = 3.0  # weight of the influence-weighted ascent (chosen on the validation split)
    init: str = "teacher"  # teacher | fresh
    check_every: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.init not in ("teacher", "fresh"):
            raise ValueError(f"init must be 'teacher' or 'fresh', got {self.init!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def _reset(model: torch.nn.Module) -> None:
    """New weights for every parameter: each layer's own initialisation where it has one
    (``reset_parameters``, the root's included), else Xavier for matrices and zeros for
    vectors (bare parameters such as a ViT's class token)."""
    covered = set()
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            covered.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in covered:
                torch.nn.init.xavier_uniform_(p) if p.dim() >= 2 else p.zero_()


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # The stopping target is what the teacher shows on held-out rows (set before a fresh
    # start: a random student's accuracy there would be chance).
    steps = max(1, round(cfg.epochs * len(retain) / cfg.batch_size))
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=checks(steps, cfg.check_every))
    if cfg.init == "fresh":
        _reset(model)
    opt = optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    t = cfg.temperature

    def retain_loss(m, x, y):
        logits = m(x)
        with torch.no_grad():
            target = F.softmax(teacher(x) / t, 1)
        match = F.kl_div(F.log_softmax(logits / t, 1), target, reduction="batchmean") * (t * t)
        return cfg.alpha * match + (1 - cfg.alpha) * F.cross_entropy(logits, y)

    def forget_loss(m, x, y):
        logits = m(x)
        right = logits.argmax(1) == y
        if not right.any():
            return logits.sum() * 0.0
        with torch.no_grad():
            weight = torch.exp(-F.cross_entropy(teacher(x[right]), y[right], reduction="none"))
        return -cfg.influence * (weight * F.cross_entropy(logits[right], y[right], reduction="none")).mean()

    forget_while_healing(model, opt, forget, retain, monitor, steps=steps, batch_size=cfg.batch_size, gen=gen,
                         forget_loss=forget_loss, retain_loss=retain_loss, forget_batch_size=cfg.forget_batch_size)
    return model
