"""certified: removal by one Newton step whose gradient residual is bounded, within an
(epsilon, delta) budget (Guo et al., ICML 2020). It needs the head's training state, not
only its weights, so it runs on the ``linear`` model kind only, in
``workers.engine.linear``; this module names it and its settings."""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("linear",)  # the model kinds it runs on
TRAINERS = ("solver",)  # and, on the linear kind, the trainers (it needs the exact minimiser)


@dataclass(frozen=True)
class Config:
    seed: int = 0


def unlearn(model, forget, retain, cfg: Config, *, heldout=None):
    raise ValueError("certified removal runs on the linear model kind, through workers.engine.linear")
