"""SCRUB (Kurmanji et al., NeurIPS 2023): the student starts as the original model (the
teacher) and alternates max-steps, moving away from the teacher on the forget set, with
min-steps, staying close to it and correct on the retain set."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn.functional as F

from workers.engine.unlearning.base import ForgetMonitor, Split, generator, sgd, step

LR = 0.01  # SGD, at the reference recipe (Adam, 3e-3)


@dataclass(frozen=True)
class Config:
    epochs: int = 3
    max_epochs: int = 2  # epochs that include a max-step pass over the forget set
    retain_batches: int = 40  # min-steps per epoch, each on a retain batch
    lr: float | None = None  # None: LR times the model's training pace (base.Context)
    temperature: float = 4.0
    alpha: float = 1.0  # weight of the distillation term in min-steps
    gamma: float = 1.0  # weight of the cross-entropy term in min-steps
    batch_size: int = 128
    seed: int = 0


def _kl(student_logits, teacher_logits, t: float):
    return F.kl_div(
        F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean"
    ) * (t * t)


def unlearn(model, forget: Split, retain: Split, cfg: Config, *, heldout: Split | None = None):
    gen = generator(cfg.seed)
    teacher = copy.deepcopy(model).eval()
    optimizer = sgd(model.parameters(), cfg.lr)
    monitor = ForgetMonitor(model, forget, retain, heldout, gen, every=1)
    retain_batches = retain.cycle(cfg.batch_size, gen)
    forgotten = False
    for epoch in range(cfg.epochs):
        # Min-steps first: at the start the student equals the teacher, where the
        # max-step's KL has zero gradient.
        model.train()
        for _ in range(cfg.retain_batches):
            x, y = next(retain_batches)
            logits = model(x)
            loss = cfg.alpha * _kl(logits, teacher(x).detach(), cfg.temperature) + cfg.gamma * F.cross_entropy(logits, y)
            step(model, optimizer, loss)
        model.train()
        if epoch < cfg.max_epochs and not forgotten:
            for x, _ in forget.batches(cfg.batch_size, gen):
                step(model, optimizer, -_kl(model(x), teacher(x).detach(), cfg.temperature))
                if monitor.done():
                    forgotten = True
                    break
    return model
