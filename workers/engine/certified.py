"""Certified removal for the ``linear`` model kind (Guo, Goldstein, Hannun and van der
Maaten, "Certified Data Removal from Machine Learning Models", ICML 2020).

The model is one-vs-rest logistic regression with an L2 penalty over unit-norm features
``phi(x)`` (``nets.certified_features``), trained on the *perturbed* objective

    L_b(W; D) = sum_i sum_k log(1 + exp(-y_ik w_k . phi_i)) + (l2 n / 2) |W|^2 + <b, W>

with every entry of ``b`` drawn from N(0, noise^2). Removing rows is one Newton step from
the current weights on the remaining rows' objective, with the removed rows' gradient
``Delta`` (the paper's update). What the step leaves is a gradient residual
``grad L_b(W-; D')``; Theorem 3 makes the removal (epsilon, delta)-certified while the
residual's norm stays within ``epsilon * noise / c``, ``c = sqrt(2 ln(1.5 / delta))``.

The residual is bounded, never assumed: each step adds the data-dependent bound of the
paper's Corollary 1, extended to a Hessian held at an earlier point. The Hessian used
is the exact one at the *anchor* weights ``W0`` (where the head was last trained) over
the rows held now: the sums ``sum_i s_i (1 - s_i) phi_i phi_i^T`` are stored at
training and each removal subtracts its rows' terms, so a removal costs two passes over
the data and a d x d Cholesky per class instead of rebuilding K Hessians. With ``a =
W - W0`` and the step ``v``, the segment from W to W + v stays within ``|phi.a| + t
|phi.v|`` of the anchor along each row, the second derivative of the logistic loss is
``GAMMA``-Lipschitz, and ``|X'|_2 <= sqrt(n')`` for unit rows, so

    |(H_seg - H0) v| <= GAMMA sqrt(n') sqrt(sum_i (|p_i| + |q_i| / 2)^2 q_i^2),
    p = X' a, q = X' v,

per class (summed over classes, an upper bound of the Frobenius norm). At ``a = 0`` this
is at most the paper's ``GAMMA |X'|_2 |H^-1 Delta| |X' H^-1 Delta|``. The optimiser's own
residual at training (it stops at a tolerance, not at the exact optimum) is measured
and counted too. When a removal would take the accumulated bound past the budget, the
head is retrained on the remaining rows with fresh noise and the budget starts again,
as the paper prescribes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

GAMMA = 0.25  # a Lipschitz constant of the logistic loss's second derivative (the paper's)


@dataclass(frozen=True)
class Budget:
    """The certification settings of a ``linear`` model."""

    epsilon: float = 1.0
    delta: float = 1e-4
    noise: float = 1.0  # standard deviation of each entry of the loss perturbation b
    l2: float = 1e-3  # the L2 penalty, times the number of rows

    def __post_init__(self):
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be in (0, inf), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not (self.noise > 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise must be in (0, inf), got {self.noise}")
        if not (self.l2 > 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be in (0, inf), got {self.l2}")

    @property
    def residual_budget(self) -> float:
        """The largest accumulated gradient-residual norm still (epsilon, delta)-certified."""
        return self.epsilon * self.noise / math.sqrt(2 * math.log(1.5 / self.delta))


@dataclass(frozen=True)
class Head:
    """A trained head and what removal needs: weights ``W`` (d x K, float64), the anchor
    ``W0`` its Hessian sums ``hessian`` (K x d x d, without the penalty) were taken at,
    over ``n`` rows, and the residual bound accumulated since it was trained."""

    weights: torch.Tensor
    anchor: torch.Tensor
    hessian: torch.Tensor
    n: int
    bound: float
    removals: int = 0


def signs(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-vs-rest targets: +1 for the row's class, -1 for the others (n x K, float64)."""
    out = -torch.ones(len(y), num_classes, dtype=torch.float64)
    out[torch.arange(len(y)), y.long().cpu()] = 1.0
    return out.to(y.device)


def gradient(w: torch.Tensor, phi: torch.Tensor, ypm: torch.Tensor, l2: float, b: torch.Tensor | None = None,
             *, n: int | None = None) -> torch.Tensor:
    """grad L_b(W) over the rows ``phi`` (the penalty counted for ``n`` rows, default all)."""
    z = phi @ w
    g = phi.T @ (-ypm * torch.sigmoid(-ypm * z)) + l2 * (len(phi) if n is None else n) * w
    return g if b is None else g + b


def objective(w: torch.Tensor, phi: torch.Tensor, ypm: torch.Tensor, l2: float, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(-ypm * (phi @ w)).sum() + l2 * len(phi) / 2 * w.pow(2).sum() + (b * w).sum()


def solve(phi: torch.Tensor, ypm: torch.Tensor, l2: float, b: torch.Tensor, *, max_iter: int = 2000,
          tolerance: float = 1e-12) -> torch.Tensor:
    """The minimiser of L_b by L-BFGS in float64 (the objective is strongly convex)."""
    n = len(phi)
    w = torch.zeros(phi.shape[1], ypm.shape[1], dtype=torch.float64, device=phi.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tolerance,
                            tolerance_change=0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(w, phi, ypm, l2, b) / n  # scaled: the tolerance is per row
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def hessian_sums(phi: torch.Tensor, w: torch.Tensor, *, block: int = 8192) -> torch.Tensor:
    """sum_i s_ik (1 - s_ik) phi_i phi_i^T for every class k (K x d x d), s = sigmoid(phi W)."""
    d, k = w.shape
    out = torch.zeros(k, d, d, dtype=torch.float64, device=phi.device)
    for start in range(0, len(phi), block):
        p = phi[start:start + block]
        s = torch.sigmoid(p @ w)
        curvature = s * (1 - s)
        for k in range(w.shape[1]):
            out[k] += (p * curvature[:, k:k + 1]).T @ p
    return out


def noise(budget: Budget, d: int, k: int, *, seed: int) -> torch.Tensor:
    """The loss perturbation b (d x K, float64) drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return budget.noise * torch.randn(d, k, generator=gen, dtype=torch.float64)


def fit(phi: torch.Tensor, y: torch.Tensor, num_classes: int, budget: Budget, *, seed: int) -> Head:
    """Train a head on ``phi`` with fresh noise drawn from ``seed``."""
    ypm = signs(y, num_classes)
    b = noise(budget, phi.shape[1], num_classes, seed=seed).to(phi.device)
    w = solve(phi, ypm, budget.l2, b)
    residual = float(gradient(w, phi, ypm, budget.l2, b).norm())
    return Head(weights=w, anchor=w.clone(), hessian=hessian_sums(phi, w), n=len(phi), bound=residual)


def step_bound(phi_keep: torch.Tensor, drift: torch.Tensor, step: torch.Tensor) -> float:
    """The bound on what one Newton step ``step`` from weights ``anchor + drift`` adds to
    the gradient residual (see the module's docstring)."""
    p, q = (phi_keep @ torch.cat([drift, step], 1)).split(step.shape[1], 1)  # one pass over the rows
    per_class = ((p.abs() + q.abs() / 2).pow(2) * q.pow(2)).sum(0).sqrt()
    return float(GAMMA * math.sqrt(len(phi_keep)) * per_class.sum())


def remove(head: Head, phi_keep: torch.Tensor, phi_gone: torch.Tensor, y_gone: torch.Tensor, l2: float
           ) -> tuple[Head, float]:
    """One Newton step removing the rows ``phi_gone`` (labels ``y_gone``); ``phi_keep``
    are the rows that remain. Returns the new head and the bound this step added."""
    m, k = len(phi_gone), head.weights.shape[1]
    if len(phi_keep) != head.n - m:
        raise ValueError(f"the head holds {head.n} rows: {m} removed leaves {head.n - m}, not {len(phi_keep)}")
    w = head.weights
    ypm = signs(y_gone, k)
    delta = gradient(w, phi_gone, ypm, l2)  # the removed rows' share of the objective's gradient
    s0 = torch.sigmoid(phi_gone @ head.anchor)
    hessian = head.hessian - torch.einsum("mk,md,me->kde", s0 * (1 - s0), phi_gone, phi_gone)
    eye = torch.eye(w.shape[0], dtype=torch.float64, device=w.device)
    chol = torch.linalg.cholesky(hessian + l2 * len(phi_keep) * eye)
    step = torch.cholesky_solve(delta.T.unsqueeze(-1), chol).squeeze(-1).T  # d x K
    added = step_bound(phi_keep, w - head.anchor, step)
    return replace(head, weights=w + step, hessian=hessian, n=len(phi_keep), bound=head.bound + added,
                   removals=head.removals + 1), added
