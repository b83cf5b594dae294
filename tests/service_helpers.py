"""Helpers for the service tests: API keys, an app on a temporary SQLite database, a way to
run the worker's tasks in-process (unit tests only; integration tests use real processes),
and an owner to delete. The API fixtures (``client``, ``ready``) are in tests/api/conftest.py."""
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


def make_settings(data_dir, **overrides) -> Settings:
    """Settings for an app on a SQLite database and broker under ``data_dir``."""
    return Settings(data_dir=data_dir, admin_keys=[ADMIN], client_keys=[CLIENT, CLIENT2], device="cpu",
                    database_url=None, broker_url=None, result_backend=None, **overrides)


def an_owner(client) -> str:
    """An owner of the ``digits`` data set imported through ``client``."""
    return client.get("/v1/datasets/digits/owners?limit=1", headers=A).json()["owners"][0]["owner_id"]


def make_app(data_dir, **overrides):
    """The API (no relay thread) on a fresh, migrated SQLite database under ``data_dir``."""
    from app.main import create_app
    from app.migrate import upgrade

    settings = make_settings(data_dir, **overrides)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    return create_app(settings, run_relay=False)


def change_settings(client, **changes) -> None:
    """Change the settings the (inline) worker runs with from now on."""
    client.app_.state.settings = client.app_.state.settings.model_copy(update=changes)


def run_worker_inline(app) -> int:
    """Deliver every outbox message to the tasks, in this process, until none is left.

    The tasks run on a Celery app built from ``app.state.settings`` (a test may replace
    those settings between calls)."""
    from app.outbox import relay_batch
    from app.worker import create_celery

    celery = create_celery(app.state.settings)
    celery.conf.task_always_eager = True
    total = 0
    while True:
        batch = []
        # Collect first, run after the relay commits: SQLite allows one writer at a time.
        if not relay_batch(app.state.sessionmaker, lambda task, payload: batch.append((task, payload))):
            return total
        for task, payload in batch:
            celery.tasks[task].apply(kwargs=payload)
        total += len(batch)


def fail_once(monkeypatch, module, name: str, error: Exception) -> None:
    """Make ``module.name`` raise ``error`` on its first call, then behave as before (a
    database that went away once)."""
    real, calls = getattr(module, name), []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, once)
