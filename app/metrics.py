"""Prometheus metrics: what the processes count, and what the database says at scrape time.

Counted where it happens (``prometheus_client``; in multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set, as ``lethe api``, ``lethe worker`` and ``lethe serve``
do, so several uvicorn workers and Celery pool processes add up):
HTTP requests by route, method and status with their latency, job duration by kind and
method, shard (re)training seconds, gate verdicts by method.

Read from the database and the broker on each scrape (``StateCollector``): deletion
requests by status, overdue requests, the outbox backlog and the age of its oldest row,
jobs by status, queue depth per Celery queue, the audit chain's length, and the model
store's bytes live (re-measured at most every ``STORE_EVERY`` seconds) and purged.

Only counts and durations: never an owner id, a reason or a row.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from app.logs import route_template
from app.statuses import RequestStatus
from app.tables import AuditEventRow, DeletionRequestRow, JobRow, OutboxRow, utcnow

CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

HTTP_REQUESTS = Counter("lethe_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("lethe_http_request_duration_seconds", "HTTP request latency by route template and method",
                         ["route", "method"], buckets=SECONDS)
JOB_DURATION = Histogram("lethe_job_duration_seconds", "Jobs that published a version: seconds from start to "
                         "publish, by kind (train, unlearn, approximate, ...) and method", ["kind", "method"],
                         buckets=JOB_SECONDS)
SHARD_SECONDS = Histogram("lethe_shard_train_seconds", "Seconds to (re)train or unlearn one shard, by plan kind",
                          ["kind"], buckets=JOB_SECONDS)
GATE_CHECKS = Counter("lethe_gate_checks", "Verify-then-publish gate verdicts by method", ["method", "result"])

STORE_EVERY = 300.0  # seconds between walks of the model store


def multiprocess_dir(data_dir: Path) -> str:
    """Count in multiprocess mode from now on: ``PROMETHEUS_MULTIPROC_DIR``, set to
    ``<data_dir>/prometheus`` when unset, holds every process's counters (children
    inherit it). The CLI calls it at start-up, before a counter has a labelled child."""
    from prometheus_client import values

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(Path(data_dir) / "prometheus")
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()  # chosen when prometheus_client was imported
    return path


def process_registry() -> CollectorRegistry:
    """What the counters add up to: every process's in multiprocess mode, else this one's."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class StateCollector:
    """The service's state, read when scraped (see the module docstring)."""

    def __init__(self, sessions, *, celery=None, queues: tuple[str, ...] = (), store=None):
        self.sessions, self.celery, self.queues, self.store = sessions, celery, queues, store
        self._store_bytes: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def collect(self):
        try:
            yield from self._database()
            up = 1
        except Exception:  # the database is down: say so, and report what does not need it
            up = 0
        yield GaugeMetricFamily("lethe_database_up", "Whether the last scrape could read the database", value=up)
        live = self._live_bytes()
        if live is not None:
            yield GaugeMetricFamily("lethe_store_live_bytes", "Bytes of artifacts in the model store",
                                    value=live)
        depth = self._queue_depths()
        if depth:
            queue = GaugeMetricFamily("lethe_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"])
            for name, n in depth.items():
                queue.add_metric([name], n)
            yield queue

    def _database(self):
        with self.sessions() as s:
            by_status = GaugeMetricFamily("lethe_deletion_requests", "Deletion requests by status", labels=["status"])
            counts = dict(s.execute(select(DeletionRequestRow.status, func.count()).group_by(DeletionRequestRow.status)).all())
            for status in RequestStatus:
                by_status.add_metric([status.value], counts.get(status.value, 0))
            yield by_status
            overdue = s.scalar(select(func.count()).select_from(DeletionRequestRow).where(
                DeletionRequestRow.due_at < utcnow(), DeletionRequestRow.status != RequestStatus.COMPLETED))
            yield GaugeMetricFamily("lethe_deletion_requests_overdue",
                                    "Deletion requests past their due time and not completed", value=overdue)
            backlog, oldest = s.execute(select(func.count(), func.min(OutboxRow.created_at))
                                        .where(OutboxRow.sent_at.is_(None))).one()
            yield GaugeMetricFamily("lethe_outbox_backlog", "Outbox rows not yet handed to the broker", value=backlog)
            age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
            yield GaugeMetricFamily("lethe_outbox_oldest_age_seconds", "Age of the oldest unsent outbox row",
                                    value=max(age, 0.0))
            jobs = GaugeMetricFamily("lethe_jobs", "Jobs by kind and status", labels=["kind", "status"])
            for kind, status, n in s.execute(select(JobRow.kind, JobRow.status, func.count())
                                             .group_by(JobRow.kind, JobRow.status)).all():
                jobs.add_metric([kind, status], n)
            yield jobs
            yield GaugeMetricFamily("lethe_audit_chain_length", "Events in the audit chain",
                                    value=s.scalar(select(func.max(AuditEventRow.seq))) or 0)
            purged = sum(json.loads(data).get("bytes", 0) for data in
                         s.scalars(select(AuditEventRow.data).where(AuditEventRow.kind == "store.purged")))
        yield CounterMetricFamily("lethe_store_purged_bytes", "Bytes of revoked versions' learned artifacts purged",
                                  value=purged)

    def _live_bytes(self) -> int | None:
        if self.store is None:
            return None
        with self._lock:
            if self._store_bytes is None or time.monotonic() - self._store_bytes[0] > STORE_EVERY:
                try:
                    self._store_bytes = (time.monotonic(), self.store.bytes_used())
                except Exception:
                    return self._store_bytes[1] if self._store_bytes else None
            return self._store_bytes[1]

    def _queue_depths(self) -> dict[str, int]:
        if self.celery is None:
            return {}
        out = {}
        try:
            with self.celery.connection_for_read() as conn:
                channel = conn.default_channel
                for name in self.queues:
                    if hasattr(channel, "_size"):  # kombu's virtual transports (Redis, SQLAlchemy): a
                        out[name] = int(channel._size(name))  # queue no worker declared yet holds 0
                    else:
                        out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
        except Exception:  # the broker is down or the queue not declared yet: nothing to report
            return out
        return out


def _aware(at):
    from datetime import timezone

    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def exposition(registry: CollectorRegistry, state: StateCollector | None) -> bytes:
    """The text format for one scrape: the counters, then the state read now."""
    body = generate_latest(registry)
    if state is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(state)
        body += generate_latest(scrape)
    return body


class HttpMetrics:
    """ASGI middleware: counts each HTTP request by its route template (``/v1/models/{name}``,
    never the path itself, which may carry an owner id) and times it. Unrouted paths are
    counted as ``unmatched``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            if route != "/metrics":
                HTTP_REQUESTS.labels(route, scope["method"], str(status[0])).inc()
                HTTP_SECONDS.labels(route, scope["method"]).observe(time.perf_counter() - started)
