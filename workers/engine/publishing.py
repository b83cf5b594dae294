"""Publishing a candidate as the model's next immutable version, at most once per job,
and revoking the earlier versions it makes obsolete."""
from __future__ import annotations

import time

import numpy as np

from models_store import ModelStore
from workers.engine.ids import get_ids, trained_on
from workers.engine.plans import Plan


def published_by_job(store: ModelStore, plan: Plan) -> dict | None:
    """The version this plan's job already published (a redelivered task), or None."""
    if plan.job is None:
        return None
    latest = store.latest_number(plan.model)
    if latest is None:
        return None
    record = store.version(plan.model, latest)
    return record if record.get("job") == plan.job else None


def publish(store: ModelStore, plan: Plan, record: dict, progress=lambda msg: None) -> dict:
    """Publish ``record`` as the version after the plan's parent; its wall time runs to now."""
    wall = time.time() - plan.started_at
    record["metrics"]["wall_seconds"] = round(wall, 3)
    published = store.publish(plan.model, record, parent=plan.parent)
    progress(f"published {plan.model} v{published['version']}: test accuracy {record['metrics']['test_accuracy']}, "
             f"{wall:.1f}s, retrained shards {record['metrics']['retrained_shards']}")
    return published


def revoke_superseded(store: ModelStore, record: dict) -> list[dict]:
    """Revoke every earlier version of ``record``'s model whose training manifest holds a
    sample ``record`` removed: those versions learned from erased data. An approximate
    version's manifest already excludes what it unlearned, so it is revoked only when a
    later version removes a sample it still holds. Idempotent: a version revoked before
    keeps its first revocation. Returns the revocations (each a store record)."""
    removed = record.get("removed", {}).get("sample_ids")
    if not removed:
        return []
    ids = get_ids(store, removed)
    if not len(ids):
        return []
    name, out = record["model"], []
    for number in store.version_numbers(name):
        if number >= record["version"]:
            break
        earlier = store.revocation(name, number)
        if earlier is None and np.isin(ids, trained_on(store, store.version(name, number))).any():
            earlier = store.revoke(name, number, requests=record["removed"]["requests"],
                                   replaced_by=record["version"])
        if earlier is not None and earlier["replaced_by"] == record["version"]:
            out.append(earlier)
    return out


def withdraw(store: ModelStore, model: str, erased: np.ndarray, requests: list[str]) -> list[dict]:
    """Revoke every live version of ``model`` trained on an ``erased`` sample, with no
    version to replace it: unlearning them failed for good, and a model must not keep
    serving what its owner had erased. Idempotent: returns every withdrawal of such a
    version, those made before included."""
    if not len(erased):
        return []
    out = []
    for number in store.version_numbers(model):
        earlier = store.revocation(model, number)
        if earlier is None and np.isin(erased, trained_on(store, store.version(model, number))).any():
            earlier = store.revoke(model, number, requests=requests, replaced_by=None)
        if earlier is not None and earlier["replaced_by"] is None:
            out.append(earlier)
    return out
