"""Errors the engine raises; each carries a machine-readable ``code`` for callers."""


class EngineError(Exception):
    """Base error: ``code`` is stable and machine-readable, the message is for people."""

    code = "engine_error"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class DatasetError(EngineError):
    code = "invalid_dataset"


class DatasetNotFound(EngineError):
    code = "dataset_not_found"


class DatasetExists(EngineError):
    code = "dataset_exists"


class OwnerNotFound(EngineError):
    code = "owner_not_found"


class ModelError(EngineError):
    code = "invalid_model"


class ModelNotFound(EngineError):
    code = "model_not_found"


class VersionNotFound(EngineError):
    code = "version_not_found"
