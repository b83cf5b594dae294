"""Model requests and answers; architectures and aggregations come from the engine's registries."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.datasets.schemas import NAME
from app.statuses import JobKind, JobStatus, ModelStatus
from app.text import Input
from workers.engine.sisa import AGGREGATIONS, PARTITIONS
from workers.engine.training import OPTIMIZERS, SCHEDULES, TrainConfig

VersionStatus = Literal["published", "revoked"]


HOLDOUT = Field(None, ge=0, lt=0.5, description="the share of rows (whole owners, seeded) kept out of training, "
               "so approximate methods stop on rows the model never saw rather than on the test split; "
               "null: 0.02 on one shard (at least 100 rows, at most a tenth), 0 on more (each shard "
               "sees the others' rows as unseen)")


class SisaStrategy(Input):
    kind: Literal["sisa"]
    shards: int = Field(ge=1, le=256)
    slices: int = Field(1, ge=1, le=64)
    aggregation: Literal[AGGREGATIONS.names()] = "mean_softmax"
    partition: Literal[PARTITIONS] = Field(
        "balanced", description="how owners are placed in shards (every owner stays whole in one shard): balanced "
                                "(a mix, by sample count), label (owners of similar labels together), kmeans (owners "
                                "clustered on their mean row under a fixed random projection); shards stay balanced")
    holdout: float | None = HOLDOUT


class MonolithicStrategy(Input):
    kind: Literal["monolithic"]
    holdout: float | None = HOLDOUT


class LinearStrategy(Input):
    """A logistic-regression head trained with a perturbed loss: the ``certified`` method
    removes owners from it with an (epsilon, delta) certificate. Architecture ``linear``:
    the head reads the raw rows; any other architecture with ``training.init`` (a
    backbone pretrained elsewhere): the head reads that network's penultimate features,
    frozen at the backbone's weights."""

    kind: Literal["linear"]
    epsilon: float = Field(1.0, gt=0, allow_inf_nan=False, description="the certificate's epsilon, in (0, inf)")
    delta: float = Field(1e-4, gt=0, lt=1, description="the certificate's delta, in (0, 1)")
    noise: float = Field(1.0, gt=0, allow_inf_nan=False,
                         description="standard deviation of the loss perturbation b (more: more removals "
                                     "before a retrain, lower accuracy)")
    l2: float = Field(1e-3, gt=0, allow_inf_nan=False, description="the L2 penalty (times the number of rows)")
    trainer: Literal["solver", "gd"] = Field(
        "solver", description="solver: the exact minimiser of the perturbed loss (what certified removal needs); "
                              "gd: full-batch gradient descent without noise, whose trajectory the deltagrad method "
                              "replays (no certificate)")
    iterations: int | None = Field(None, ge=1, le=100_000, description="gd: steps (default 300)")
    lr: float | None = Field(None, gt=0, lt=8, description="gd: step size (default 4.0)")


class GdStrategy(Input):
    """A network (``architecture``: an MLP over a table, say) trained by full-batch
    gradient descent on the mean cross-entropy, every step kept so the ``deltagrad``
    method can replay the training without removed rows. Its trajectory (2 x iterations
    x parameters float64 numbers) must fit in 512 MiB."""

    kind: Literal["gd"]
    iterations: int = Field(300, ge=1, le=100_000, description="steps")
    lr: float = Field(0.1, gt=0, le=10, description="step size")
    l2: float = Field(1e-4, ge=0, allow_inf_nan=False, description="the L2 penalty")


class TrainingSettings(Input):
    """The training recipe (``workers.engine.training.TrainConfig``, which also checks
    the combinations: a bad one is 422 ``invalid_request`` with error type
    ``invalid_recipe``). Every default is the recipe before these settings existed."""

    epochs: int = Field(5, ge=1, le=500)
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=10, description="the learning rate (one_cycle: its peak)")
    weight_decay: float = Field(0.0, ge=0, le=1, description="adam, sgd: L2 penalty; adamw: decoupled decay")
    slice_epochs: Literal["each", "budget"] = "each"
    optimizer: Literal[OPTIMIZERS] = "adam"
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd with momentum > 0 only")
    schedule: Literal[SCHEDULES] = Field("none", description="the learning rate's schedule, stepped every batch")
    step_size: int | None = Field(None, ge=1, le=500, description="step schedule (required): epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: the decay factor")
    warmup_epochs: int = Field(0, ge=0, le=500, description="linear warm-up (one_cycle: its rising phase)")
    warmup_steps: int = Field(0, ge=0, le=10**7, description="the warm-up in batches instead of epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(None, gt=0, description="clip the gradients' total norm; null: no clipping")
    random_crop_padding: int = Field(0, ge=0, le=64, description="images only: zero-pad and crop back at a "
                                     "random offset, per sample; 0: off")
    random_horizontal_flip: bool = Field(False, description="images only: mirror half the samples")
    mixed_precision: bool = Field(False, description="bf16 autocast on CUDA (no effect on CPU)")
    init: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                             description="start every constituent from this pretrained backbone (the digest "
                                         "POST /v1/backbones answered)")

    @model_validator(mode="after")
    def _recipe(self):
        try:
            TrainConfig(**self.model_dump())
        except ValueError as exc:
            raise PydanticCustomError("invalid_recipe", "{reason}", {"reason": str(exc)}) from None
        return self


class ModelCreate(Input):
    name: str = Field(pattern=NAME)
    dataset: str
    architecture: str = Field("cnn", max_length=64, description="a name from GET /v1/architectures: built in, "
                              "any torchvision classification model, or an installed plugin")
    architecture_params: dict = Field(default_factory=dict, description="the architecture's own keyword arguments")
    strategy: Annotated[SisaStrategy | MonolithicStrategy | LinearStrategy | GdStrategy, Field(discriminator="kind")]
    training: TrainingSettings = TrainingSettings()
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ModelImport(Input):
    """The form fields of ``POST /v1/models/import`` (``weights`` is the file part)."""

    name: str = Field(pattern=NAME)
    dataset: str
    architecture: str = Field(max_length=64)
    architecture_params: dict = Field(default_factory=dict)
    training: TrainingSettings = Field(TrainingSettings(), description="the recipe an exact removal retrains with")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: JobKind
    status: JobStatus
    progress: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelAccepted(BaseModel):
    model: str
    status: ModelStatus
    job: JobOut


class BackboneOut(BaseModel):
    digest: str = Field(description="name it as training.init when creating a model")
    architecture: str
    dataset: str
    keys: list[str] = Field(description="the checkpoint's parameters and buffers that fit the architecture")
    skipped: list[str] = Field(description="those that do not (a head for other classes, say): they start afresh")


class ModelOut(BaseModel):
    # ``job`` is set after validating the model row; always present in an answer.
    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)

    name: str
    dataset: str
    architecture: str
    architecture_params: dict | None = None
    strategy: dict
    training: dict = Field(validation_alias=AliasChoices("training", "recipe"),
                           description="the full recipe (a model recorded before a setting existed shows its default)")
    status: ModelStatus
    latest_version: int | None
    error: str | None
    job: JobOut | None = None
    created_at: datetime

    @field_validator("training")
    @classmethod
    def _full_recipe(cls, recipe: dict) -> dict:
        return {**TrainConfig().to_dict(), **recipe}


class VersionSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)

    model: str
    version: int
    parent: int | None
    kind: str
    method: str
    manifest_digest: str
    n_samples: int
    requests: list[str]
    test_accuracy: float | None = Field(None, validation_alias=AliasChoices("test_accuracy",
                                                                      AliasPath("metrics", "test_accuracy")))
    created_at: datetime
    status: VersionStatus = "published"
    revoked_at: datetime | None = None
    replaced_by: int | None = None


class Constituent(BaseModel):
    shard: int
    status: str
    retrained_from_slice: int | None
    n_samples: int
    manifest_digest: str
    weights_sha256: str = Field(validation_alias=AliasChoices("weights_sha256", "weights"))
    tainted_from_slice: int | None = Field(
        None, description="approximately unlearned: checkpoints from this slice on still carry removed samples")


class VersionOut(BaseModel):
    """A version as its store record says (``from_record``), with its revocation state."""

    model: str
    version: int
    parent: int | None
    kind: str
    method: str
    method_config: dict | None = Field(None, description="hyper-parameters of an approximate method")
    exact: bool = Field(description="false when some constituent was unlearned approximately")
    dataset: str
    architecture: str
    architecture_params: dict | None = None
    strategy: dict
    recipe: dict
    device: str
    n_samples: int
    manifest_digest: str
    record_sha256: str | None = Field(description="sha256 of the stored record; null for a client when the record "
                                                  "names owners of other callers' requests (it would let them be guessed)")
    requests: list[str]
    removed: dict
    metrics: dict
    constituents: list[Constituent]
    artifacts: dict[str, str]
    created_at: str
    status: VersionStatus = Field("published", description="revoked: trained on data erased since; "
                                  "its weights and predictions are gone (410), its record stays")
    revoked_at: datetime | None = None
    revoked_for: list[str] | None = Field(None, description="the deletion requests that revoked it")
    replaced_by: int | None = Field(None, description="the version that removed the erased data (null on a "
                                    "revoked version: withdrawn because unlearning failed for good)")
    purged_at: datetime | None = Field(None, description="when its learned artifacts were deleted from the store")

    @classmethod
    def from_record(cls, r: dict, row=None) -> "VersionOut":
        """From the store record and the version's row (revocation state), if any."""
        method = r.get("method", {})
        state = {"status": row.status, "revoked_at": row.revoked_at, "revoked_for": row.revoked_for,
                 "replaced_by": row.replaced_by, "purged_at": row.purged_at} if row is not None else {}
        return cls.model_validate({**r, "method": method.get("name", "exact"), "method_config": method.get("config"),
                                   "exact": r.get("exact", True), "requests": r["removed"]["requests"], **state})


class AliasIn(Input):
    version: int = Field(ge=1, le=2**31 - 1)


class AliasOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model: str
    alias: str
    version: int
    updated_at: datetime


class PredictIn(BaseModel):
    inputs: list[list[float]] | list = Field(
        description="a batch of inputs in the dataset's raw units, each flat or in the input shape")


class PredictOut(BaseModel):
    model: str
    version: int
    probabilities: list[list[float]]
    predicted: list[int]


class ArchitectureOut(BaseModel):
    name: str
    source: Literal["builtin", "torchvision", "plugin"]
    parameters: dict = Field(description="keyword parameters and their defaults (null: required); a torchvision "
                             "model also takes torchvision.models.get_model's keyword arguments")
