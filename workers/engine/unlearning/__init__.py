"""Approximate unlearning methods, registered by name.

Each is one module with a ``Config`` dataclass and
``unlearn(model, forget, retain, cfg, *, heldout=None) -> model``; adding a method is
adding a file and a line in ``METHODS`` (the API's and the CLI's method names come from it).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from types import ModuleType

import torch

from workers.engine.registry import Registry
from workers.engine.unlearning import certified, deltagrad, distill, fisher, ft, ga, iu, l1_sparse, rl, salun, scrub, ssd
from workers.engine.unlearning.base import Context, Split

METHODS: Registry[ModuleType] = Registry("unlearning method")
for _module in (ft, ga, rl, iu, l1_sparse, fisher, ssd, salun, scrub, distill, certified, deltagrad):
    METHODS.add(_module.__name__.rsplit(".", 1)[1], _module)


@dataclass
class Result:
    model: torch.nn.Module
    method: str
    config: dict
    seconds: float  # RTE: wall time of the method alone


def config(name: str, overrides: dict | None = None):
    """The method's Config with ``overrides`` applied; unknown names raise ValueError."""
    cls = METHODS.get(name).Config
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides or {}) - fields
    if unknown:
        raise ValueError(f"{name} has no hyper-parameter {', '.join(sorted(unknown))}")
    return cls(**(overrides or {}))


def supported_kinds(name: str) -> tuple[str, ...] | None:
    """The model kinds method ``name`` runs on; None: every kind (and for names that are
    not methods: ``exact``, ``auto``)."""
    return getattr(METHODS.get(name), "KINDS", None) if name in METHODS else None


def unsupported(name: str | None, strategy: dict) -> str | None:
    """Why method ``name`` cannot run on a model of ``strategy`` (a strategy record);
    None when it can. A method names the model kinds it needs (``KINDS``) and, for the
    linear kind, the trainers (``TRAINERS``)."""
    kinds = supported_kinds(name) if name else None
    if kinds is None:
        return None
    kind = strategy["kind"]
    if kind not in kinds:
        return f"method {name!r} runs on model kinds {', '.join(kinds)} only; this model is {kind}"
    trainers = getattr(METHODS.get(name), "TRAINERS", None) if kind == "linear" else None
    trainer = strategy.get("trainer") or "solver"
    if trainers is not None and trainer not in trainers:
        return f"method {name!r} runs on linear models trained with {' or '.join(trainers)}; this one uses {trainer}"
    return None


def general() -> list[str]:
    """The methods that run on any model (on bare torch modules); the others name the
    model kinds they need (``certified``: the ``linear`` kind)."""
    return [name for name in METHODS if supported_kinds(name) is None]


def resolve(name: str, cfg, context: Context):
    """``cfg`` with its relative defaults made absolute for a model of ``context``: a
    learning rate not given is the method's tuned ``LR`` times the model's pace."""
    if getattr(cfg, "lr", 0.0) is None:
        cfg = dataclasses.replace(cfg, lr=METHODS.get(name).LR * context.lr_scale)
    return cfg


def run(name: str, model: torch.nn.Module, forget: Split, retain: Split, *, heldout: Split | None = None,
        overrides: dict | None = None, recipe: dict | None = None) -> Result:
    """Unlearn ``forget`` from a copy of ``model`` with method ``name``; the original is
    untouched. ``recipe`` is the model's training recipe, which defaults are relative to
    (``Context``, with the retain set's size); the result's config holds the values that ran."""
    cfg = resolve(name, config(name, overrides), Context.of(recipe, len(retain)))
    student = copy.deepcopy(model)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = METHODS.get(name).unlearn(student, forget, retain, cfg, heldout=heldout)
    if student.parameters().__next__().is_cuda:
        torch.cuda.synchronize()
    return Result(student.eval(), name, dataclasses.asdict(cfg), time.perf_counter() - started)


__all__ = ["METHODS", "Context", "Result", "Split", "config", "general", "resolve", "run", "supported_kinds", "unsupported"]
