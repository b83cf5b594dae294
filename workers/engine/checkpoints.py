"""Checkpoints as safetensors bytes: weights, optimiser state, and what made them.

safetensors (no pickle) gives the same bytes for the same tensors and metadata, so a
checkpoint's sha256 identifies it and unchanged constituents deduplicate in the store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optim_state: dict
    info: dict  # model args, slice step, manifest digest of data seen, recipe


def dumps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: dict) -> bytes:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for pid, state in optim["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{key}"] = t.detach().cpu().contiguous()
    # One metadata key: safetensors writes several keys in no fixed order, which would
    # make equal checkpoints hash differently.
    meta = {"info": info, "param_groups": optim["param_groups"]}
    return st_save(tensors, metadata={"lethe": json.dumps(meta, sort_keys=True)})


def loads(data: bytes) -> Checkpoint:
    tensors = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["lethe"])
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    optim_state = {"state": state, "param_groups": meta["param_groups"]}
    return Checkpoint(model_state, optim_state, meta["info"])
