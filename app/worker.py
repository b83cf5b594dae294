"""The Celery application factory, configured for long GPU jobs (see DESIGN.md section 7).

Late acknowledgement with reject-on-worker-loss means a job whose worker dies is
delivered again, so every task is idempotent. No torch work happens at import time or
in the factory: CUDA must not be initialised in the parent before the prefork pool
forks. Each pool process builds its own job flow (engine, database pool) on first use.
"""
from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

from app.jobs import tasks
from app.jobs.flow import check_settings
from app.settings import Settings

QUEUE = "gpu"


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``, with Lethe's tasks (``app.jobs.tasks``) registered."""
    check_settings(settings)  # a bad setting stops the worker at start-up, not each task
    app = Celery("lethe", broker=settings.celery_broker_url, backend=settings.celery_result_backend)
    app.lethe_settings = settings
    redis = settings.celery_broker_url.startswith(("redis://", "rediss://"))
    # Redis redelivers an unacknowledged task after the visibility timeout: keep it above
    # the longest job, or a long job runs twice. (The SQLAlchemy transport rejects the option.)
    transport = {"visibility_timeout": settings.visibility_timeout} if redis else {}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport if settings.celery_result_backend.startswith("redis") else {},
        task_default_queue=QUEUE,
        task_routes={"lethe.*": {"queue": QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        # The outbox retries unsent work, so a publish should fail fast, not hang the relay.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
        # A failing shard task calls the job's error callback directly (job_failed is idempotent).
        task_allow_error_cb_on_chord_header=True,
    )
    if settings.celery_broker_url.startswith("sqla+"):
        # kombu's SQLAlchemy transport polls once a second by default; passing the
        # interval through broker_transport_options crashes, so set the class attribute.
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = settings.broker_polling_interval
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    def limit_torch_threads(**_):
        # One pool process per core budget; torch's own pool would otherwise oversubscribe.
        import torch

        torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 1)
                                                            // max(1, settings.worker_concurrency)))

    worker_process_init.connect(limit_torch_threads, weak=False)
    tasks.register(app)
    return app
