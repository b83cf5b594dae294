"""Sample-id lists (a slice, a forget set, a removal) stored as blobs in the model store:
sorted little-endian int64, so a blob's sha256 is the list's manifest digest."""
from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

import numpy as np

from models_store import ModelStore
from models_store.backends import LocalBackend
from models_store.errors import BlobCorrupt
from workers.engine.digests import sorted_ids

MAP_BYTES = 1 << 20  # lists from this size on, in a local store, are memory-mapped


def put_ids(store: ModelStore, ids: np.ndarray) -> str:
    ids = sorted_ids(ids)
    # A local store writes from the array itself: no bytes copy of millions of ids.
    return store.put_blob(memoryview(ids).cast("B") if isinstance(store.backend, LocalBackend) else ids.tobytes())


def get_ids(store: ModelStore, key: str) -> np.ndarray:
    """The ids stored under ``key`` (read-only: a view of the blob, not a copy).

    A large list in a local store is memory-mapped rather than read: its pages are then
    page cache, which the kernel can drop and read again, not the process's own memory
    (a shard's ids on 7.8 million rows are 31 MiB, held by training, the candidate and
    the planning of a removal). Its digest is checked as :meth:`ModelStore.get_blob` does."""
    path = _local_blob(store, key)
    if path is not None:
        try:
            with open(path, "rb") as fh:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) \
                    if path.stat().st_size >= MAP_BYTES else None
        except FileNotFoundError:
            mapped = None  # get_blob says it is missing
        if mapped is not None:
            if hashlib.sha256(mapped).hexdigest() != key:
                raise BlobCorrupt(f"artifact {key} does not match its digest")
            return np.frombuffer(mapped, dtype="<i8")
    return np.frombuffer(store.get_blob(key), dtype="<i8")


def _local_blob(store: ModelStore, key: str) -> Path | None:
    """The file of blob ``key`` where the store is a local directory (the layout of
    ``models_store.store``: ``objects/sha256/<ab>/<digest>``), else None."""
    backend = store.backend
    if not isinstance(backend, LocalBackend) or len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        return None
    return backend.root / "objects" / "sha256" / key[:2] / key


def slice_ids(store: ModelStore, record: dict) -> list[list[np.ndarray]]:
    """The sample ids each constituent of a version trained on, slice by slice."""
    return [[get_ids(store, s["sample_ids"]) for s in c["slices"]] for c in record["constituents"]]


def trained_on(store: ModelStore, record: dict) -> np.ndarray:
    """Every sample id a version was trained on."""
    return np.concatenate([np.concatenate(s) for s in slice_ids(store, record)])
