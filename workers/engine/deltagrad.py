"""DeltaGrad (Wu, Dobriban and Davidson, "DeltaGrad: Rapid retraining of machine
learning models", ICML 2020) for a model trained by full-batch gradient descent: here
one-vs-rest L2 logistic regression over the ``linear`` kind's unit-norm features
(``nets.certified_features``), the objective

    F(W) = (1/n) sum_i sum_k log(1 + exp(-y_ik w_k . phi_i)) + (l2 / 2) |W|^2.

Training runs T steps ``W_{t+1} = W_t - lr grad F(W_t)`` and keeps the trajectory: every
``W_t`` and the data term's full gradient at it. Removing r rows replays the T steps
from ``W_0`` on the remaining rows without paying for their full gradient each time:

- at the first ``j0`` steps (burn-in) and every ``t0``-th step after, the remaining
  rows' gradient at the replayed point ``V_t`` is computed exactly (from the full
  gradient less the removed rows'), and the pair ``(V_t - W_t, grad F(V_t) - grad
  F(W_t))`` is kept (the last ``m`` of them);
- at the other steps, ``grad F(V_t)`` is approximated by ``grad F(W_t) + B (V_t - W_t)``
  with ``B`` the L-BFGS approximation of the data term's Hessian built from those pairs
  (the compact form of Byrd, Nocedal and Schnabel, 1994), one per class; only the
  removed rows' gradients are computed exactly.

So a removal costs about T / t0 full gradients instead of T, and lands near the
weights that retraining by the same T steps would give (the paper reports a relative
distance of about 1e-3). The L2 term's gradient is always exact. Everything is float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from workers.engine import certified


@dataclass(frozen=True)
class Schedule:
    """How training runs and how a removal replays it."""

    lr: float = 1.0  # unit-norm rows: the data term's Hessian is at most 1/4, so lr < 8 converges
    iterations: int = 300
    l2: float = 1e-3
    j0: int = 10  # exact steps at the start (burn-in)
    t0: int = 5  # then one exact step in t0
    m: int = 2  # curvature pairs kept (the paper uses 2)

    def __post_init__(self):
        if not self.lr > 0 or self.iterations < 1 or self.l2 < 0 or self.j0 < 1 or self.t0 < 1 or self.m < 1:
            raise ValueError(f"invalid DeltaGrad schedule: {self}")


@dataclass
class Trajectory:
    """What training keeps for removals: ``W_0 .. W_{T-1}`` and the data term's gradient
    at each (``T x d x K``), over the ``n`` rows trained on."""

    weights: torch.Tensor
    gradients: torch.Tensor
    n: int
    # Which stored gradients are exact (all, after training; the exact steps, after a
    # replay). Curvature pairs are taken only there: a pair against an approximated
    # gradient is not curvature, and a later replay on another schedule would diverge.
    exact: torch.Tensor | None = None  # bool, T; None: all
    replays: int = 0  # removals replayed since the head was trained

    def exact_at(self, t: int) -> bool:
        return self.exact is None or bool(self.exact[t])


@dataclass
class Replay:
    weights: torch.Tensor
    trajectory: Trajectory  # the replayed path, for the next removal (its gradients partly approximated)
    exact_steps: int  # steps that computed the remaining rows' full gradient
    approximate_steps: int


def data_gradient(w: torch.Tensor, phi: torch.Tensor, ypm: torch.Tensor) -> torch.Tensor:
    """The data term's gradient summed over the rows (not averaged)."""
    return certified.gradient(w, phi, ypm, 0.0)


def train(phi: torch.Tensor, ypm: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, Trajectory]:
    """Full-batch gradient descent from zero; the final weights and the trajectory."""
    w0 = torch.zeros(phi.shape[1], ypm.shape[1], dtype=torch.float64, device=phi.device)
    return descend(w0, lambda w: data_gradient(w, phi, ypm), len(phi), schedule)


def descend(w0: torch.Tensor, gradient: Callable[[torch.Tensor], torch.Tensor], n: int,
            schedule: Schedule) -> tuple[torch.Tensor, Trajectory]:
    """``schedule.iterations`` steps of full-batch gradient descent from ``w0`` on the mean
    of ``gradient`` (the data term's gradient summed over the ``n`` rows) plus the L2
    term; the final weights and the trajectory. ``w0`` is ``d x K`` (a flat parameter
    vector is ``d x 1``)."""
    w = w0.clone()
    weights = torch.empty(schedule.iterations, *w.shape, dtype=w.dtype, device=w.device)
    gradients = torch.empty_like(weights)
    for t in range(schedule.iterations):
        g = gradient(w) / n
        weights[t], gradients[t] = w, g
        w = w - schedule.lr * (g + schedule.l2 * w)
    return w, Trajectory(weights, gradients, n)


def retrain(phi: torch.Tensor, ypm: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The exact reference: the same T steps on the given rows."""
    return train(phi, ypm, schedule)[0]


def _lbfgs_product(pairs: list[tuple[torch.Tensor, torch.Tensor]], v: torch.Tensor) -> torch.Tensor:
    """``B v`` per class (columns of ``v``), B the compact L-BFGS Hessian approximation of
    the pairs ``(s, y)`` (each ``d x K``), with ``B_0 = (y.y / s.y) I`` from the last pair."""
    s = torch.stack([p[0] for p in pairs]).permute(2, 1, 0)  # K x d x m
    y = torch.stack([p[1] for p in pairs]).permute(2, 1, 0)
    vk = v.T.unsqueeze(2)  # K x d x 1
    sy = s.transpose(1, 2) @ y  # K x m x m
    sigma = (y[:, :, -1] * y[:, :, -1]).sum(1) / sy[:, -1, -1]  # K
    m = s.shape[2]
    lower = torch.tril(sy, diagonal=-1)
    middle = torch.cat([
        torch.cat([sigma[:, None, None] * (s.transpose(1, 2) @ s), lower], 2),
        torch.cat([lower.transpose(1, 2), -torch.diag_embed(torch.diagonal(sy, dim1=1, dim2=2))], 2),
    ], 1)  # K x 2m x 2m
    basis = torch.cat([sigma[:, None, None] * s, y], 2)  # K x d x 2m
    coef = torch.linalg.solve(middle, basis.transpose(1, 2) @ vk)
    out = sigma[:, None, None] * vk - basis @ coef
    assert out.shape[2] == 1 and coef.shape[1] == 2 * m
    return out.squeeze(2).T


def remove(trajectory: Trajectory, phi_keep: torch.Tensor, ypm_keep: torch.Tensor, phi_gone: torch.Tensor,
           ypm_gone: torch.Tensor, schedule: Schedule) -> Replay:
    """Replay the training without the rows ``phi_gone``: ``phi_keep`` and ``phi_gone``
    together must be the rows the trajectory was trained on (in any order)."""
    return replay(trajectory, len(phi_keep), lambda v: data_gradient(v, phi_keep, ypm_keep),
                  len(phi_gone), lambda v: data_gradient(v, phi_gone, ypm_gone), schedule, LOGISTIC_CURVATURE)


LOGISTIC_CURVATURE = 0.25  # the logistic loss's Hessian on unit-norm rows is at most 1/4


def replay(trajectory: Trajectory, n_keep: int, keep_gradient: Callable[[torch.Tensor], torch.Tensor], r: int,
           gone_gradient: Callable[[torch.Tensor], torch.Tensor], schedule: Schedule,
           curvature: float) -> Replay:
    """Replay the trajectory without ``r`` removed rows, given the summed data-term
    gradients of the ``n_keep`` kept rows and of the removed ones. ``curvature`` bounds
    the data term's Hessian: a pair with ``y.y > curvature * s.y`` is not kept (see
    :func:`_curvature`)."""
    n = trajectory.n
    if n_keep + r != n:
        raise ValueError(f"DeltaGrad replays the {n} rows the trajectory was trained on; "
                         f"got {n_keep} kept and {r} removed")
    if r == 0 or r >= n:
        raise ValueError(f"cannot remove {r} of {n} rows")
    steps = len(trajectory.weights)
    v = trajectory.weights[0].clone()
    weights, gradients = torch.empty_like(trajectory.weights), torch.empty_like(trajectory.gradients)
    was_exact = torch.zeros(steps, dtype=torch.bool)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in range(steps):
        w_t, g_t = trajectory.weights[t], trajectory.gradients[t]
        removed = gone_gradient(v)
        if t < schedule.j0 or (t - schedule.j0) % schedule.t0 == 0 or not pairs:
            kept = keep_gradient(v)
            if trajectory.exact_at(t):
                s, y = v - w_t, (kept + removed) / n - g_t
                if _curvature(s, y, curvature):
                    pairs = (pairs + [(s, y)])[-schedule.m:]
            remaining = kept / (n - r)
            was_exact[t] = True
        else:
            full = g_t + _lbfgs_product(pairs, v - w_t)
            remaining = (n * full - removed) / (n - r)
        weights[t], gradients[t] = v, remaining
        v = v - schedule.lr * (remaining + schedule.l2 * v)
    exact = int(was_exact.sum())
    return Replay(v, Trajectory(weights, gradients, n - r, was_exact, trajectory.replays + 1), exact, steps - exact)


def _curvature(s: torch.Tensor, y: torch.Tensor, bound: float) -> bool:
    """Whether ``(s, y)`` is a curvature pair of the data term for every column: ``0 <
    s.y`` and ``y.y <= bound * s.y``, ``bound`` the Hessian's largest eigenvalue (for
    the logistic head 1/4 on unit-norm rows; a pair outside that did not come from the
    loss, and would make B unstable). A pair of negative curvature (a non-convex
    network) is not kept either."""
    sy, yy = (s * y).sum(0), (y * y).sum(0)
    return bool(((sy > 0) & (yy <= bound * (1 + 1e-6) * sy)).all())
