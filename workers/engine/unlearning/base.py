"""What every approximate unlearning method shares: data splits and small training helpers.

A method is one module with ``Config`` (a frozen dataclass of hyper-parameters with
working defaults) and ``unlearn(model, forget, retain, cfg, *, heldout=None) -> model``.
``heldout`` is data the model never saw (a validation or test sample); methods that
stop early use it to know what "forgotten" looks like: accuracy on the forget set
no higher than on data never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from workers.engine import metrics


# What the defaults were tuned on (bench/unlearning_fashion_mnist.py --tune): a CNN
# trained with Adam at a peak learning rate of 3e-3 (and what counts as the same pace for
# SGD), unlearned with about 9,000 retain rows.
REFERENCE_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.1}
REFERENCE_RETAIN_ROWS = 9000


@dataclass(frozen=True)
class Context:
    """What a method's relative defaults are relative to: the model's own training recipe
    and the size of the retain set it meets. A method's learning rate, unless given, is
    its tuned value times ``lr_scale``:

    - the model's pace: a model trained at a tenth of the reference learning rate is
      unlearned at a tenth of the method's too;
    - the run's length: below the reference retain set, by the square root of the
      shortfall. Methods count passes over the retain set, so a small one makes a short
      run, and a short run has no steps left to heal what its first steps at full rate
      (Adam's first steps move every weight by about the rate) do to the model: on
      digits (990 retain rows, 4 steps) GA at the full rate lost 3 points of TA.
    """

    optimizer: str = "adam"
    lr: float = REFERENCE_LR["adam"]
    retain_rows: int = REFERENCE_RETAIN_ROWS

    @classmethod
    def of(cls, recipe: dict | None, retain_rows: int = REFERENCE_RETAIN_ROWS) -> "Context":
        """From a stored recipe (``TrainConfig.to_dict()``); the reference pace without one
        (an imported model recorded with no recipe)."""
        recipe = recipe or {}
        return cls(optimizer=recipe.get("optimizer", "adam"), lr=float(recipe.get("lr", REFERENCE_LR["adam"])),
                   retain_rows=int(retain_rows))

    @property
    def lr_scale(self) -> float:
        pace = self.lr / REFERENCE_LR.get(self.optimizer, REFERENCE_LR["adam"])
        return pace * min(1.0, (max(self.retain_rows, 1) / REFERENCE_RETAIN_ROWS) ** 0.5)


def checks(steps: int, every: int, looks: int = 8) -> int:
    """Steps between looks at the forget set: ``every``, or often enough for ``looks``
    looks in a run of ``steps`` (a small retain set makes a short run, which a fixed
    interval would let finish before its first look)."""
    return max(1, min(every, steps // looks))


@dataclass
class Split:
    """Inputs and labels of one set (forget, retain, held-out), already on the device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, rows: torch.Tensor) -> "Split":
        rows = rows.to(self.x.device)
        return Split(self.x[rows], self.y[rows])

    def sample(self, n: int, gen: torch.Generator) -> "Split":
        """At most ``n`` rows, drawn without replacement."""
        if n >= len(self):
            return self
        return self.subset(torch.randperm(len(self), generator=gen)[:n])

    def batches(self, batch_size: int, gen: torch.Generator, epochs: float = 1.0) -> Iterator[tuple]:
        """Shuffled mini-batches for ``epochs`` passes (a fraction stops part-way)."""
        total = int(round(epochs * len(self)))
        done = 0
        while done < total:
            order = torch.randperm(len(self), generator=gen).to(self.x.device)
            for start in range(0, len(self), batch_size):
                rows = order[start : start + batch_size][: total - done]
                yield self.x[rows], self.y[rows]
                done += len(rows)
                if done >= total:
                    return

    def cycle(self, batch_size: int, gen: torch.Generator) -> Iterator[tuple]:
        """Shuffled mini-batches forever."""
        while True:
            yield from self.batches(batch_size, gen)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 2048) -> float:
    if len(split) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        correct += (model(split.x[i : i + batch_size]).argmax(1) == split.y[i : i + batch_size]).sum().item()
    return correct / len(split)


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


def optimizer(name: str, params, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd`` (with momentum) or ``adam`` (the benchmark's models were trained with Adam)."""
    if name == "adam":
        return torch.optim.Adam(list(params), lr=lr)
    if name == "sgd":
        return sgd(params, lr, momentum)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, mask=None) -> None:
    """One optimiser step; ``mask`` (param -> 0/1 tensor) zeroes the gradient of frozen weights."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if mask is not None:
        for p in model.parameters():
            if p.grad is not None and p in mask:
                p.grad.mul_(mask[p])
    optimizer.step()


def random_other_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    shift = torch.randint(1, num_classes, y.shape, generator=gen).to(y.device)
    return (y + shift) % num_classes


def num_classes(model: nn.Module, split: Split) -> int:
    with torch.no_grad():
        model.eval()
        return int(model(split.x[:1]).shape[1])


def expected_forget_accuracy(model, forget: Split, retain: Split, heldout: Split) -> float:
    """What a model retrained without the forget set would score on it, estimated from
    the model's accuracy on held-out data (see ``metrics.expected_accuracy``)."""
    with torch.no_grad():
        model.eval()
        predicted = torch.cat([model(heldout.x[i : i + 2048]).argmax(1) for i in range(0, len(heldout), 2048)])
    correct = (predicted == heldout.y).float()

    def class_accuracy(c):
        rows = heldout.y == c
        return correct[rows].mean().item() if rows.any() else None

    return metrics.expected_accuracy(forget.y.cpu().numpy(), class_accuracy, set(torch.unique(retain.y).tolist()))


class ForgetMonitor:
    """Stops a forgetting loop once the model is no more accurate on the forget set than
    a model that never saw it would be (``expected_forget_accuracy``).

    Without held-out data it never stops early. Checks a fixed sample of at most
    ``rows`` forget rows, every ``every`` steps.
    """

    def __init__(self, model, forget: Split, retain: Split, heldout: Split | None, gen, *, every: int = 10,
                 rows: int = 512):
        self.model, self.every, self.steps = model, every, 0
        self.forget = forget.sample(rows, gen)
        self.target = None
        if heldout is not None and len(heldout):
            self.target = expected_forget_accuracy(model, forget, retain, heldout.sample(8192, gen))

    def done(self) -> bool:
        self.steps += 1
        if self.target is None or self.steps % self.every:
            return False
        reached = accuracy(self.model, self.forget) <= self.target
        self.model.train()
        return reached

    def still_seen(self) -> bool:
        """Whether the forget set still looks seen; re-measured every ``every`` calls."""
        if self.target is None:
            return True
        if self.steps % self.every == 0:
            self._seen = accuracy(self.model, self.forget) > self.target
            self.model.train()
        self.steps += 1
        return self._seen


def forget_while_healing(model, optimizer, forget: Split, retain: Split, monitor: ForgetMonitor, *, steps: int,
                         batch_size: int, gen, forget_loss, mask=None, forget_batch_size: int | None = None,
                         retain_loss=None) -> None:
    """Every step trains on a retain batch (``retain_loss(model, x, y)``, cross-entropy by
    default); while the forget set still looks seen, the step also carries
    ``forget_loss`` on a forget batch. The retain half keeps the model whole, the
    controller keeps the forget set where unseen data sits, not below it."""
    forget_batches = forget.cycle(forget_batch_size or batch_size, gen)
    retain_batches = retain.cycle(batch_size, gen)
    model.train()
    for _ in range(steps):
        xr, yr = next(retain_batches)
        loss = retain_loss(model, xr, yr) if retain_loss else torch.nn.functional.cross_entropy(model(xr), yr)
        if monitor.still_seen():
            xf, yf = next(forget_batches)
            # Weighted per row like the retain batch: a 3-row owner must not weigh as much
            # as 128 retain rows.
            loss = loss + forget_loss(model, xf, yf) * (len(yf) / len(yr))
        step(model, optimizer, loss, mask)
