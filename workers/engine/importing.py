"""Importing a model trained elsewhere: its weights become version 1 of a monolithic
model on a dataset, evaluated and served like any other, then unlearned like any other.

Weights come as a safetensors state dict, a ``torch.save``d state dict read with
``weights_only=True`` — never unpickled — or a whole-model archive: TorchScript
(``torch.jit.save``) or ``torch.export`` (``torch.export.save``, a ``.pt2``). An archive
is loaded by torch's own loaders (TorchScript code and export graphs, which cannot run
arbitrary Python) and only its weights are kept: they must fit the named architecture
exactly (every key, every shape; the first mismatch is the error), and the archive's
outputs on the first rows of the dataset must equal the architecture's with those
weights, so a model that merely shares key names with the architecture is refused. The version's manifest is
the dataset's rows at import (what the model is declared to have learned), so a deletion
request for any of its owners covers the model: an approximate method unlearns from the
imported weights, and ``exact`` retrains it from scratch with its recipe on the rows
held then (the honest reference; its cost is a full training run).
"""
from __future__ import annotations

import io
import time
import warnings
import zipfile
from typing import Callable

import torch

from models_store import ModelStore
from workers.engine import checkpoints, nets
from workers.engine.digests import ids_digest
from workers.engine.errors import ModelError, WeightsError
from workers.engine.ledger import Dataset, check_name
from workers.engine.planning import _create_or_resume, _shard
from workers.engine.plans import Plan, PlanKind, ShardStatus
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig, scaled

MONOLITHIC = Strategy("monolithic")


def archive_kind(data: bytes) -> str | None:
    """``"torchscript"`` or ``"export"`` for a whole-model archive, else None (a state
    dict, or not a zip at all)."""
    if not data.startswith(b"PK"):
        return None
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "export"
    if any("/code/__torch__/" in n for n in names):
        return "torchscript"
    return None


def load_archive(data: bytes) -> tuple[dict[str, torch.Tensor], Callable[[torch.Tensor], torch.Tensor], int | None]:
    """The weights of a TorchScript or torch.export archive, the archive's own forward
    (for checking it against the architecture), and the batch size it was exported with
    (None: any)."""
    kind = archive_kind(data)
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():  # deprecated in favour of torch.export, still what many companies have
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            module.eval()
            return dict(module.state_dict()), module, None
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # the loaders raise many types for a damaged archive
        raise WeightsError(f"not a loadable {kind} archive: {exc}".splitlines()[0]) from None
    state = {**program.state_dict, **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}}
    examples = program.example_inputs[0] if program.example_inputs else ()
    batch = int(examples[0].shape[0]) if examples and isinstance(examples[0], torch.Tensor) and examples[0].dim() \
        else None
    return state, program.module(), batch


def check_outputs(net: torch.nn.Module, forward, x: torch.Tensor) -> None:
    """WeightsError unless ``forward`` (the archive) gives ``net``'s outputs on ``x``."""
    net.eval()
    with torch.no_grad():
        try:
            theirs = forward(x)
        except Exception as exc:
            raise WeightsError(f"the archive does not run on this dataset's inputs (shape {list(x.shape)}): "
                               f"{exc}".splitlines()[0]) from None
        ours = net(x)
    if not isinstance(theirs, torch.Tensor) or theirs.shape != ours.shape:
        raise WeightsError(f"the archive's output ({getattr(theirs, 'shape', type(theirs).__name__)}) is not "
                           f"the architecture's ({tuple(ours.shape)})")
    if not torch.allclose(theirs.float(), ours.float(), rtol=1e-3, atol=1e-4):
        diff = (theirs.float() - ours.float()).abs().max().item()
        raise WeightsError(f"the archive computes something else than the architecture with its weights "
                           f"(outputs differ by up to {diff:.3g} on the dataset's first rows)")


def read_weights(data: bytes) -> dict[str, torch.Tensor]:
    """A state dict from safetensors bytes, or from a ``torch.save`` file loaded with
    ``weights_only=True``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError):
        pass
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a weights-only archive
        raise WeightsError(f"not a safetensors state dict or a weights-only torch file: {exc}".splitlines()[0]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError("the file holds no state dict (a mapping of names to tensors)")
    return state


def fit(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load ``weights`` into ``net``; WeightsError naming the first key that does not fit."""
    own = net.state_dict()
    for key in own:
        if key not in weights:
            raise WeightsError(f"missing key {key!r} (the architecture has it, the weights do not)")
        if tuple(weights[key].shape) != tuple(own[key].shape):
            raise WeightsError(f"key {key!r} has shape {tuple(weights[key].shape)}, the architecture "
                               f"expects {tuple(own[key].shape)}")
    for key in weights:
        if key not in own:
            raise WeightsError(f"unexpected key {key!r} (the architecture has no such parameter)")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def plan_import(store: ModelStore, ds: Dataset, name: str, *, architecture: str, weights: bytes,
                architecture_params: dict | None = None, config: TrainConfig = TrainConfig(),
                job: str | None = None) -> Plan:
    """Check the weights against the architecture, store them as the model's one
    checkpoint, and plan version 1 (nothing to run: it is published as it is)."""
    started = time.time()
    check_name(name, "model")
    info = ds.info()
    try:
        net = nets.build(architecture, info.input_shape, info.num_classes, seed=0, params=architecture_params)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    arrays = ds.load_arrays()
    if archive_kind(weights):
        state, forward, batch = load_archive(weights)
        fit(net, state)
        k = min(len(arrays.sample_ids), batch or 8)
        check_outputs(net, forward, scaled(arrays.x[:k], info.x_scale, "cpu"))
    else:
        fit(net, read_weights(weights))
    ids = arrays.sample_ids
    spec = {
        "name": name, "dataset": ds.name, "architecture": architecture,
        **({"architecture_params": dict(architecture_params)} if architecture_params else {}),
        "strategy": MONOLITHIC.to_dict(), "recipe": config.to_dict(),
        "input_shape": info.input_shape, "num_classes": info.num_classes, "imported": True,
    }
    _create_or_resume(store, name, spec)
    ckpt_info = {
        "architecture": architecture,
        **({"architecture_params": dict(architecture_params)} if architecture_params else {}),
        "input_shape": info.input_shape, "num_classes": info.num_classes, "shard": 0, "slice": 0,
        "samples_seen": int(len(ids)), "manifest_digest": ids_digest(ids), "imported": True,
    }
    blob = checkpoints.dumps(net, torch.optim.SGD(net.parameters(), lr=0.0), ckpt_info)
    digest = store.put_blob(blob)
    return Plan(name, PlanKind.IMPORT, None, job, spec, started,
                [_shard(store, 0, [ids], ShardStatus.IMPORTED, None, [digest])])
