"""Reading weights a company brings: a safetensors or ``torch.save`` state dict (read
weights-only, never unpickled), or a whole-model archive (TorchScript, ``torch.export``)
of which only the weights are kept; fitting them to an architecture, whole (an
imported model) or in part (a pretrained backbone that initialises a new one)."""
from __future__ import annotations

import io
import warnings
import zipfile
from typing import Callable

import torch

from workers.engine.errors import WeightsError


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


def state_dict_of(data: bytes) -> dict[str, torch.Tensor]:
    """The weights in any file an import takes: a state dict or a whole-model archive."""
    return load_archive(data)[0] if archive_kind(data) else read_weights(data)


def backbone(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The part of ``weights`` that initialises ``net`` (a backbone pretrained elsewhere):
    every key the architecture has with the same shape. The rest is returned by name
    (a classifier head for other classes, say). WeightsError when nothing fits."""
    own = net.state_dict()
    fits = {k: v.to(own[k].dtype).contiguous() for k, v in weights.items()
            if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not any(k in fits for k, _ in net.named_parameters()):
        first = next(iter(own))
        raise WeightsError(f"no parameter of the checkpoint fits the architecture (it starts with {first!r}, "
                           f"shape {tuple(own[first].shape)})")
    return fits, sorted(set(weights) - set(fits))


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
