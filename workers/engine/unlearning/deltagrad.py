"""deltagrad: replay a gradient-descent training without the forget rows (Wu, Dobriban
and Davidson, ICML 2020), approximating most steps' full gradients by L-BFGS. It needs
the training trajectory, not only the weights, so it runs on ``linear`` models trained
with ``trainer: gd`` (``workers.engine.linear``) and on networks of the ``gd`` kind
(``workers.engine.gdnet``); this module names it and its replay settings
(``workers.engine.deltagrad.Schedule``)."""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("linear", "gd")  # the model kinds it runs on
TRAINERS = ("gd",)  # and, on the linear kind, the trainers


@dataclass(frozen=True)
class Config:
    j0: int = 10  # exact steps at the start (burn-in)
    t0: int = 5  # then one exact step in t0
    m: int = 2  # curvature pairs kept
    # Each replayed path carries its approximations into the next removal: after this
    # many removals since training, the head is retrained by gradient descent instead.
    max_replays: int = 25
    seed: int = 0

    def __post_init__(self):
        if self.j0 < 1 or self.t0 < 1 or self.m < 1 or self.max_replays < 1:
            raise ValueError(f"j0, t0, m and max_replays must be >= 1, got {self.j0}, {self.t0}, {self.m}, "
                             f"{self.max_replays}")


def unlearn(model, forget, retain, cfg: Config, *, heldout=None):
    raise ValueError("deltagrad runs on linear models trained with trainer 'gd' and on gd models, through "
                     "workers.engine.linear and workers.engine.gdnet")
