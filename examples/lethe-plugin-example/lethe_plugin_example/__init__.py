"""An example architecture plugin for Lethe (see this folder's pyproject.toml)."""
from __future__ import annotations

from math import prod

from torch import nn


def acme_tabular(input_shape: list[int], num_classes: int, hidden: int = 64, dropout: float = 0.1) -> nn.Module:
    """ACME's tabular model: a two-layer MLP with dropout over the flattened input."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(prod(input_shape), hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
