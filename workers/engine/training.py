"""The training loop: plain torch, seeded, with the data held as one tensor on the device."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; stored with every model and checkpoint.

    A SISA constituent trains in one step per slice, over the slices seen so far.
    ``slice_epochs`` says how many passes each step makes: ``"each"`` gives every step
    ``epochs`` passes (so slicing costs (R+1)/2 times the passes of no slicing);
    ``"budget"`` gives each step round(2 * epochs / (R+1)) passes, at least one, so the
    total matches ``epochs`` passes over the shard (the SISA paper's rule).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    slice_epochs: str = "each"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("epochs and batch_size must be >= 1, lr > 0, weight_decay >= 0")
        if self.slice_epochs not in ("each", "budget"):
            raise ValueError(f"slice_epochs must be 'each' or 'budget', got {self.slice_epochs!r}")

    def step_epochs(self, slices: int) -> int:
        """Passes per slice step for a constituent with ``slices`` slices."""
        if self.slice_epochs == "each":
            return self.epochs
        return max(1, round(2 * self.epochs / (slices + 1)))

    def to_dict(self) -> dict:
        return asdict(self)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def make_deterministic() -> None:
    """Same inputs, same weights: deterministic kernels and no autotuning."""
    # Not a setting of Lethe's: cuBLAS reads this when CUDA starts, and deterministic
    # GEMMs need it; a value the operator set is kept.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def scaled(x: np.ndarray, x_scale: float, device) -> torch.Tensor:
    """Raw rows, in the dataset's units, as float32 model inputs on ``device``."""
    return torch.as_tensor(x.astype(np.float32) * np.float32(x_scale)).to(device)


class DeviceData:
    """A dataset's rows as float tensors on the device, addressable by sample id."""

    def __init__(self, sample_ids: np.ndarray, x: np.ndarray, y: np.ndarray, x_scale: float, device):
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.device = torch.device(device)
        self.x = scaled(x, x_scale, self.device)
        self.y = torch.as_tensor(y.astype(np.int64)).to(self.device)

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        """Row positions of ``ids``; every id must be present."""
        pos = np.searchsorted(self.sample_ids, ids)
        if len(ids) and (pos.max() >= len(self.sample_ids) or (self.sample_ids[pos] != ids).any()):
            raise KeyError("some sample ids are not in the dataset")
        return torch.as_tensor(pos, dtype=torch.int64)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceData,
    rows: torch.Tensor,
    cfg: TrainConfig,
    *,
    epochs: int,
    seed: int,
) -> float:
    """Train for ``epochs`` passes over ``rows`` in a seeded order; return the last loss."""
    model.train()
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    n = len(rows)
    for _ in range(epochs):
        order = rows[torch.randperm(n, generator=gen)].to(data.device)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
    return loss_value


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    model.eval()
    out = [torch.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
