"""The states of models, jobs, deletion requests and their per-model outcomes. Stored
as their string values; ``StrEnum`` members compare equal to those strings."""
from __future__ import annotations

from enum import StrEnum


class ModelStatus(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


class JobKind(StrEnum):
    TRAIN = "train"
    UNLEARN = "unlearn"
    RETRAIN = "retrain"  # every shard from scratch on the data held now (POST /v1/models/{name}/retrain)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class RequestStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class OutcomeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
