"""Versioned, immutable, content-addressed model store: the bottom layer (it imports
nothing of Lethe's)."""
from models_store.backends import Backend, FsspecBackend, LocalBackend, check_store_url, open_backend
from models_store.errors import (
    BlobCorrupt,
    LetheError,
    ModelExists,
    ModelNotFound,
    StoreError,
    VersionConflict,
    VersionNotFound,
)
from models_store.store import ModelStore

__all__ = [
    "Backend",
    "BlobCorrupt",
    "FsspecBackend",
    "LetheError",
    "LocalBackend",
    "ModelExists",
    "ModelNotFound",
    "ModelStore",
    "StoreError",
    "VersionConflict",
    "VersionNotFound",
    "check_store_url",
    "open_backend",
]
