"""Helpers for the service tests: an app on a temporary SQLite database, and a way to
run the worker's tasks in-process (unit tests only; integration tests use real processes)."""
from __future__ import annotations

from app.settings import Settings

ADMIN, CLIENT, CLIENT2 = "admin-key-1", "client-key-1", "client-key-2"
A = {"Authorization": f"Bearer {ADMIN}"}
C = {"Authorization": f"Bearer {CLIENT}"}
C2 = {"Authorization": f"Bearer {CLIENT2}"}

TINY_MODEL = {
    "name": "m",
    "dataset": "digits",
    "architecture": "mlp",
    "strategy": {"kind": "sisa", "shards": 2, "slices": 2},
    "training": {"epochs": 2, "batch_size": 64},
}


def use_settings(monkeypatch, data_dir, **extra) -> Settings:
    """Point every cached settings/DB/engine helper at ``data_dir``."""
    from app import db
    from app.settings import get_settings

    env = {"LETHE_DATA_DIR": str(data_dir), "LETHE_ADMIN_KEYS": ADMIN, "LETHE_CLIENT_KEYS": f"{CLIENT},{CLIENT2}",
           "LETHE_DEVICE": "cpu", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for name in ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_RESULT_BACKEND"):
        if name not in env:
            monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    return get_settings()


def run_worker_inline(app) -> int:
    """Deliver every outbox message to the tasks, in this process, until none is left."""
    from app.outbox import relay_batch
    from workers import tasks
    from workers.celery_app import celery_app

    celery_app.conf.task_always_eager = True
    tasks.engine.cache_clear()

    total = 0
    while True:
        batch = []
        # Collect first, run after the relay commits: SQLite allows one writer at a time.
        if not relay_batch(app.state.sessionmaker, lambda task, payload: batch.append((task, payload))):
            return total
        for task, payload in batch:
            celery_app.tasks[task].apply(kwargs=payload)
        total += len(batch)
