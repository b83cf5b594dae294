"""Versioned, immutable, content-addressed model store."""
from models_store.backends import Backend, FsspecBackend, LocalBackend, open_backend
from models_store.store import (
    BlobCorrupt,
    ModelExists,
    ModelStore,
    StoreError,
    UnknownModel,
    UnknownVersion,
    VersionConflict,
)

__all__ = [
    "Backend",
    "BlobCorrupt",
    "FsspecBackend",
    "LocalBackend",
    "ModelExists",
    "ModelStore",
    "StoreError",
    "UnknownModel",
    "UnknownVersion",
    "VersionConflict",
    "open_backend",
]
