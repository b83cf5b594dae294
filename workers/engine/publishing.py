"""Publishing a candidate as the model's next immutable version, at most once per job."""
from __future__ import annotations

import time

from models_store import ModelStore
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
