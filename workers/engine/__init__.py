"""The unlearning engine: data ledger, models, SISA training and exact unlearning.

It speaks neither HTTP nor Celery, so tests, benchmarks and the CLI call it directly.
"""
from workers.engine.errors import (
    DatasetError,
    DatasetExists,
    DatasetNotFound,
    EngineError,
    ModelError,
    ModelNotFound,
    OwnerNotFound,
    VersionNotFound,
)

__all__ = [
    "DatasetError",
    "DatasetExists",
    "DatasetNotFound",
    "EngineError",
    "ModelError",
    "ModelNotFound",
    "OwnerNotFound",
    "VersionNotFound",
]
