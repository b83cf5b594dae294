"""Sample-id lists (a slice, a forget set, a removal) stored as blobs in the model store:
sorted little-endian int64, so a blob's sha256 is the list's manifest digest."""
from __future__ import annotations

import numpy as np

from models_store import ModelStore
from workers.engine.digests import sorted_ids


def put_ids(store: ModelStore, ids: np.ndarray) -> str:
    return store.put_blob(sorted_ids(ids).tobytes())


def get_ids(store: ModelStore, key: str) -> np.ndarray:
    """The ids stored under ``key`` (read-only: a view of the blob, not a copy)."""
    return np.frombuffer(store.get_blob(key), dtype="<i8")


def slice_ids(store: ModelStore, record: dict) -> list[list[np.ndarray]]:
    """The sample ids each constituent of a version trained on, slice by slice."""
    return [[get_ids(store, s["sample_ids"]) for s in c["slices"]] for c in record["constituents"]]


def trained_on(store: ModelStore, record: dict) -> np.ndarray:
    """Every sample id a version was trained on."""
    return np.concatenate([np.concatenate(s) for s in slice_ids(store, record)])
