"""The one error family of Lethe's libraries: every error has a stable, machine-readable
``code`` and a ``detail`` for people. The engine's errors derive from :class:`LetheError`
too, so the API and the CLI each map a single family."""
from __future__ import annotations


class LetheError(Exception):
    code = "error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class StoreError(LetheError):
    """The store cannot do what was asked (a missing blob, for one): a server-side fault."""

    code = "store_error"


class ModelExists(StoreError):
    code = "model_exists"


class ModelNotFound(StoreError):
    code = "model_not_found"


class VersionNotFound(StoreError):
    code = "version_not_found"


class VersionConflict(StoreError):
    """Another publisher got to the next version number first: re-derive from it."""

    code = "version_conflict"


class BlobCorrupt(StoreError):
    """Stored bytes no longer match their sha256."""

    code = "blob_corrupt"
