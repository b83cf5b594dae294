"""Errors the engine raises; each carries a machine-readable ``code`` for callers.

They belong to the store's family (:class:`models_store.LetheError`), and a missing
model or version is the store's own error, so callers map one family of codes.
"""
from models_store.errors import LetheError, ModelNotFound, VersionNotFound


class EngineError(LetheError):
    code = "engine_error"


class DatasetError(EngineError):
    """The data, or a request about it, is not usable (bad arrays, bad name, bad source)."""

    code = "invalid_dataset"


class DatasetNotFound(EngineError):
    code = "dataset_not_found"


class DatasetExists(EngineError):
    code = "dataset_exists"


class OwnerNotFound(EngineError):
    """The dataset never held that owner."""

    code = "owner_not_found"


class ModelError(EngineError):
    """A model cannot be trained or unlearned as asked (shape, strategy, method)."""

    code = "invalid_model"


class MethodNotSupported(ModelError):
    """The method does not run on the model's kind (``certified`` needs ``linear``)."""

    code = "method_not_supported"


class ForgetSetUnavailable(EngineError):
    """An approximate pass lost its forget set (the evidence was destroyed after it was
    planned): planned again, the removal is exact."""

    code = "forget_set_unavailable"


__all__ = [
    "DatasetError",
    "DatasetExists",
    "DatasetNotFound",
    "EngineError",
    "LetheError",
    "MethodNotSupported",
    "ModelError",
    "ModelNotFound",
    "OwnerNotFound",
    "VersionNotFound",
]


class WeightsError(EngineError):
    """Uploaded weights cannot be read, or do not fit the architecture."""

    code = "invalid_weights"
