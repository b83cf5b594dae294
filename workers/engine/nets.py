"""Architectures, registered by name: a small MLP and CNN written here, and torchvision's
ResNet-18. A builder takes ``(input_shape, num_classes)`` and returns an untrained
``nn.Module``; it raises ValueError for inputs it cannot take. Adding an architecture is
one builder and its ``@ARCHITECTURES.register`` line."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from workers.engine.registry import Registry

Builder = Callable[[list[int], int], nn.Module]
ARCHITECTURES: Registry[Builder] = Registry("architecture")


class MLP(nn.Module):
    def __init__(self, input_shape: list[int], num_classes: int, hidden: int = 256):
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= d
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-pool blocks and two linear layers; works for images of side 4 and up."""

    def __init__(self, input_shape: list[int], num_classes: int, width: int = 16):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs C x H x W inputs, got shape {input_shape}")
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * (h // 4) * (w // 4), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


@ARCHITECTURES.register("mlp")
def mlp(input_shape: list[int], num_classes: int) -> nn.Module:
    return MLP(input_shape, num_classes)


@ARCHITECTURES.register("cnn")
def cnn(input_shape: list[int], num_classes: int) -> nn.Module:
    if len(input_shape) == 3 and min(input_shape[1:]) < 4:
        raise ValueError(f"cnn needs images of side 4 or more, got {input_shape}")
    return SmallCNN(input_shape, num_classes)


@ARCHITECTURES.register("resnet18")
def resnet18(input_shape: list[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stem and no max-pool, for small images."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs C x H x W inputs, got shape {input_shape}")
    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build(architecture: str, input_shape: list[int], num_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised network; the same ``seed`` gives the same weights."""
    builder = ARCHITECTURES.get(architecture)
    # Forking keeps the caller's global RNG untouched while seeding the init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(input_shape, num_classes)


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
