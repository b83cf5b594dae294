"""Architectures, registered by name. A builder takes ``(input_shape, num_classes,
**params)`` and returns an untrained ``nn.Module``; it raises ValueError for inputs it
cannot take. Three kinds:

- built in: a small MLP (``mlp``, also for tables), a logistic regression (``linear``),
  a small CNN (``cnn``) and a ResNet-18 with a stem for small images (``resnet18``);
- every torchvision classification model by its name (``resnet50``,
  ``mobilenet_v3_small``, ``efficientnet_b0``, ``vit_b_16``, ``convnext_tiny``, ...),
  built with ``torchvision.models.get_model(name, weights=None, num_classes=...)`` and
  adapted to the data: any channel count, small images (a 3x3 stem for ResNets, else the
  input is resized to the model's smallest side);
- plugins: a package that declares an entry point in the ``lethe.architectures`` group
  (``name = "package.module:builder"``) adds its builder under that name — a company's
  model is a pip-installable plugin, not a fork.
"""
from __future__ import annotations

import inspect
import logging
from importlib.metadata import entry_points
from typing import Callable

import torch
from torch import nn

from workers.engine.registry import Registry

Builder = Callable[..., nn.Module]
ARCHITECTURES: Registry[Builder] = Registry("architecture")
SOURCES: dict[str, str] = {}  # architecture name -> builtin | torchvision | plugin
PLUGIN_GROUP = "lethe.architectures"
log = logging.getLogger("lethe.engine")


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


def _builtin(name: str):
    def add(builder: Builder) -> Builder:
        SOURCES[name] = "builtin"
        return ARCHITECTURES.register(name)(builder)
    return add


@_builtin("mlp")
def mlp(input_shape: list[int], num_classes: int, hidden: int = 256) -> nn.Module:
    return MLP(input_shape, num_classes, hidden=hidden)


@_builtin("linear")
def linear(input_shape: list[int], num_classes: int) -> nn.Module:
    """Logistic regression: one linear layer over the flattened input."""
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, num_classes))


def certified_features(x: torch.Tensor) -> torch.Tensor:
    """The ``linear`` kind's features: each row flattened, scaled to unit norm (a zero row
    stays zero) and given a constant for the bias, then divided by sqrt(2), so every
    feature vector has norm at most 1 (what certified removal's bound assumes)."""
    x = x.reshape(len(x), -1)
    norm = x.norm(dim=1, keepdim=True)
    x = torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) / 2**0.5


def without_classifier(net: nn.Module) -> nn.Module:
    """``net`` with its last ``nn.Linear`` (the classifier) replaced by the identity: its
    penultimate features. ValueError when it has no linear layer."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("a feature extractor needs a final nn.Linear classifier to drop; this model has none")
    *path, last = names[-1].split(".")
    parent = net.get_submodule(".".join(path)) if path else net
    setattr(parent, last, nn.Identity())
    return net


class CertifiedLinear(nn.Module):
    """Logistic regression over :func:`certified_features`: the ``linear`` model kind's head,
    on the raw rows or, with ``features`` (``{"architecture", "params"}``), on the
    penultimate features of that network, frozen (``extractor``; its weights come from a
    backbone pretrained elsewhere and are never trained here)."""

    def __init__(self, input_shape: list[int], num_classes: int, features: dict | None = None):
        super().__init__()
        self.extractor = None
        n_in = 1
        for d in input_shape:
            n_in *= d
        if features:
            net = build(features["architecture"], input_shape, num_classes, seed=0, params=features.get("params"))
            self.extractor = without_classifier(net).eval().requires_grad_(False)
            with torch.no_grad():
                n_in = self.extractor(torch.zeros(2, *input_shape)).reshape(2, -1).shape[1]
        # float64: the weights served are the ones the removal bound is computed for
        self.weight = nn.Parameter(torch.zeros(num_classes, n_in + 1, dtype=torch.float64))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.extractor is not None:
            self.extractor.eval()  # frozen: its batch norms keep their statistics
        return self

    @torch.no_grad()
    def phi(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The certified features of rows ``x`` (model inputs), float64."""
        if self.extractor is None:
            return certified_features(x.to(self.weight.dtype))
        dtype = next(self.extractor.parameters(), torch.zeros(())).dtype
        parts = [self.extractor(x[i:i + batch_size].to(dtype)).reshape(len(x[i:i + batch_size]), -1)
                 for i in range(0, len(x), batch_size)]
        feats = torch.cat(parts) if parts else torch.zeros(0, self.weight.shape[1] - 1, device=x.device)
        return certified_features(feats.to(self.weight.dtype))

    def forward(self, x):
        return (self.phi(x) @ self.weight.T).float()


@_builtin("certified_linear")
def certified_linear(input_shape: list[int], num_classes: int, features: dict | None = None) -> nn.Module:
    """The ``linear`` model kind's head (trained by certified removal's solver or by
    full-batch gradient descent, not by SGD), optionally over a frozen extractor."""
    return CertifiedLinear(input_shape, num_classes, features)


@_builtin("cnn")
def cnn(input_shape: list[int], num_classes: int, width: int = 16) -> nn.Module:
    if len(input_shape) == 3 and min(input_shape[1:]) < 4:
        raise ValueError(f"cnn needs images of side 4 or more, got {input_shape}")
    return SmallCNN(input_shape, num_classes, width=width)


def _small_stem_resnet(net: nn.Module, channels: int) -> nn.Module:
    """A ResNet's 7x7 stride-2 stem and max-pool replaced by a 3x3 stride-1 conv, for
    small images (the usual CIFAR adaptation)."""
    net.conv1 = nn.Conv2d(channels, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@_builtin("resnet18")
def resnet18(input_shape: list[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stem and no max-pool, for small images."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs C x H x W inputs, got shape {input_shape}")
    return _small_stem_resnet(tv_resnet18(weights=None, num_classes=num_classes), input_shape[0])


# The smallest input side some torchvision models take (others: 32).
_MIN_SIDE = {"alexnet": 64, "inception_v3": 75, "googlenet": 32, "maxvit_t": 224}
_RESNETS = ("resnet", "resnext", "wide_resnet")


class _Adapted(nn.Module):
    """A torchvision model behind an input adapter: a 1x1 conv to 3 channels and/or a
    resize to the model's input side."""

    def __init__(self, net: nn.Module, channels: int, side: int | None):
        super().__init__()
        self.to_rgb = nn.Conv2d(channels, 3, kernel_size=1) if channels != 3 else nn.Identity()
        self.side = side
        self.net = net

    def forward(self, x):
        x = self.to_rgb(x)
        if self.side is not None and tuple(x.shape[-2:]) != (self.side, self.side):
            x = nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.net(x)


def _torchvision_builder(name: str) -> Builder:
    def build_torchvision(input_shape: list[int], num_classes: int, **params) -> nn.Module:
        from torchvision.models import get_model

        if len(input_shape) != 3:
            raise ValueError(f"{name} needs C x H x W inputs, got shape {input_shape}")
        channels, side = input_shape[0], min(input_shape[1:])
        if name in ("googlenet", "inception_v3"):
            params = {"aux_logits": False, "init_weights": True, **params}
        if name.startswith(_RESNETS) and side < 64:
            net = get_model(name, weights=None, num_classes=num_classes, **params)
            return _small_stem_resnet(net, channels)
        target = max(side, _MIN_SIDE.get(name, 32))
        if name.startswith("vit_"):
            patch = int(name.rsplit("_", 1)[1])
            target = -(-target // patch) * patch  # a whole number of patches
            params = {"image_size": target, **params}
        try:
            net = get_model(name, weights=None, num_classes=num_classes, **params)
        except TypeError as exc:
            raise ValueError(f"{name}: {exc}") from None
        resize = target if (target != side or input_shape[1] != input_shape[2]) else None
        return _Adapted(net, channels, resize) if channels != 3 or resize else net

    build_torchvision.__doc__ = f"torchvision's {name} (keyword arguments go to torchvision.models.get_model)"
    return build_torchvision


# torchvision.models.list_models() of the pinned torchvision (0.28.0), written out so
# that naming the architectures does not import torchvision: its ops import torch._dynamo
# and sympy, about 85 MiB in every worker process that trains no torchvision model.
# tests/engine/test_architectures.py checks the list against torchvision's own.
TORCHVISION_CLASSIFIERS = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121", "densenet161",
    "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf",
    "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf",
    "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def _register_torchvision() -> None:
    for name in TORCHVISION_CLASSIFIERS:
        if name not in ARCHITECTURES:
            ARCHITECTURES.add(name, _torchvision_builder(name))
            SOURCES[name] = "torchvision"


def _lazy_plugin(ep) -> Builder:
    def build_plugin(input_shape: list[int], num_classes: int, **params) -> nn.Module:
        return ep.load()(input_shape, num_classes, **params)

    build_plugin.entry_point = ep
    return build_plugin


def load_plugins() -> list[str]:
    """Register the builders of installed ``lethe.architectures`` entry points (a plugin
    never replaces a built-in name); the names added."""
    added = []
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in ARCHITECTURES:
            if SOURCES.get(ep.name) != "plugin":
                log.warning("architecture plugin %s (%s) skipped: the name is taken", ep.name, ep.value)
            continue
        ARCHITECTURES.add(ep.name, _lazy_plugin(ep))
        SOURCES[ep.name] = "plugin"
        added.append(ep.name)
    return added


def parameters(name: str) -> dict:
    """The keyword parameters of architecture ``name`` and their defaults (for a plugin,
    those of its builder; a torchvision model takes get_model's keyword arguments)."""
    builder = ARCHITECTURES.get(name)
    target = builder.entry_point.load() if hasattr(builder, "entry_point") else builder
    out = {}
    for p in list(inspect.signature(target).parameters.values())[2:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def describe() -> list[dict]:
    """Every installed architecture: name, where it comes from, its parameters."""
    return [{"name": n, "source": SOURCES.get(n, "builtin"), "parameters": parameters(n)} for n in ARCHITECTURES]


_register_torchvision()
load_plugins()


def build(architecture: str, input_shape: list[int], num_classes: int, *, seed: int,
          params: dict | None = None) -> nn.Module:
    """A freshly initialised network; the same ``seed`` gives the same weights. ``params``
    are the architecture's own keyword arguments (ValueError if it does not take them)."""
    builder = ARCHITECTURES.get(architecture)
    # Forking keeps the caller's global RNG untouched while seeding the init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return builder(list(input_shape), num_classes, **(params or {}))
        except TypeError as exc:
            raise ValueError(f"architecture {architecture!r}: {exc}") from None


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
