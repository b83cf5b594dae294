"""The typed state of one training or unlearning pass: what planning decides, what each
shard run reads, what the candidate version is built from.

A plan is JSON-safe (``to_dict``/``from_dict``) and names every artifact by digest, so
any worker can run any of its shards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum


class ShardStatus(StrEnum):
    TRAINED = "trained"  # a new model's shard, trained from scratch
    RETRAINED = "retrained"  # retrained from the checkpoint before its earliest touched slice
    REUSED = "reused"  # untouched: its checkpoints are kept as they are
    APPROXIMATE = "approximate"  # unlearned by an approximate method from the parent's weights
    IMPORTED = "imported"  # weights trained elsewhere, brought in as they are


class PlanKind(StrEnum):
    TRAIN = "train"
    UNLEARN = "unlearn"  # exact: SISA retraining of the touched shards
    FULL_RETRAIN = "full_retrain"  # every shard from scratch (the reference)
    APPROXIMATE = "approximate"
    IMPORT = "imported"  # a model trained elsewhere becomes version 1


@dataclass
class ShardPlan:
    shard: int
    status: ShardStatus
    from_slice: int | None  # first slice to (re)train; None when reused
    slices: list[str]  # sample-id blob per slice
    slice_sizes: list[int]
    checkpoints: list[str]  # kept checkpoints: of slices before from_slice (all, when reused)
    test_probs: str | None = None  # a reused constituent's stored test-set outputs
    retain_probs: str | None = None  # ... and its outputs on the parent's retain sample
    tainted_from_slice: int | None = None  # see ``candidate``: approximate trace from this slice on
    parent_weights: str | None = None  # approximate: the weights to unlearn from
    forget_ids: str | None = None  # approximate: the sample ids this constituent forgets

    @property
    def runs(self) -> bool:
        """Whether this shard needs a worker (everything but a reused constituent)."""
        return self.status not in (ShardStatus.REUSED, ShardStatus.IMPORTED)


@dataclass
class MethodSpec:
    name: str
    config: dict


@dataclass
class Removal:
    """What a pass removes: the erasures it covers (ids digests, never rows) and requests."""

    owners: list[dict]
    requests: list[str]
    sample_count: int
    sample_ids_digest: str
    sample_ids: str  # blob of the removed sample ids


@dataclass
class Plan:
    model: str
    kind: PlanKind
    parent: int | None
    job: str | None
    spec: dict  # the model's spec: dataset, architecture, strategy, recipe, shapes
    started_at: float
    shards: list[ShardPlan]
    removal: Removal | None = None
    evidence: list[str] = dataclasses.field(default_factory=list)  # requests whose sealed rows are the forget set
    method: MethodSpec | None = None  # approximate passes only

    @property
    def to_run(self) -> list[int]:
        return [s.shard for s in self.shards if s.runs]

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            model=d["model"], kind=PlanKind(d["kind"]), parent=d["parent"], job=d["job"], spec=d["spec"],
            started_at=d["started_at"],
            shards=[ShardPlan(**{**s, "status": ShardStatus(s["status"])}) for s in d["shards"]],
            removal=Removal(**d["removal"]) if d.get("removal") else None,
            # Older plans named a plaintext scratch file: their requests' evidence instead.
            evidence=list(d["evidence"] if "evidence" in d else (d.get("removal") or {}).get("requests") or []),
            method=MethodSpec(**d["method"]) if d.get("method") else None,
        )


def _plain(value):
    """Enums as their values, so the dict is plain JSON."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


__all__ = ["MethodSpec", "Plan", "PlanKind", "Removal", "ShardPlan", "ShardStatus"]
