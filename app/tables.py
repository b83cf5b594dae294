"""Database tables (SQLAlchemy 2.0). The schema itself changes only through Alembic
migrations in ``migrations/``; these classes must match the latest revision.

Samples stay in each dataset's engine ledger (indexed by ``owner_id``); the
``datasets`` table points at it by name.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way in and out; SQLite would hand back naive datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}


class DatasetRow(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    n_samples: Mapped[int]
    n_owners: Mapped[int]
    info: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # One job at a time changes a dataset's models: a job holds this lease until it ends.
    busy_job: Mapped[str | None] = mapped_column(String(36))
    busy_until: Mapped[datetime | None]


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"), index=True)
    architecture: Mapped[str] = mapped_column(String(64))
    architecture_params: Mapped[dict | None]  # the architecture's keyword arguments (0007)
    strategy: Mapped[dict]
    recipe: Mapped[dict]
    status: Mapped[str] = mapped_column(String(16))  # queued | training | ready | failed
    latest_version: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[int]
    parent: Mapped[int | None]
    kind: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    manifest_digest: Mapped[str] = mapped_column(String(64))
    record_sha256: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int]
    metrics: Mapped[dict]
    requests: Mapped[list]
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when a later version removed samples this one was trained on (0002).
    revoked_at: Mapped[datetime | None]
    revoked_for: Mapped[list | None]  # the deletion requests that revoked it
    replaced_by: Mapped[int | None]
    purged_at: Mapped[datetime | None]  # its learned artifacts deleted from the store

    @property
    def status(self) -> str:
        return "revoked" if self.revoked_at is not None else "published"


class ModelAliasRow(Base):
    """A name for one version of a model (``production``); never on a revoked version."""

    __tablename__ = "model_aliases"

    model: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # train | unlearn
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | completed | failed
    plan: Mapped[dict | None]
    version: Mapped[int | None]
    progress: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    transient_failures: Mapped[int] = mapped_column(default=0, server_default="0")  # a train job queued again (0008)
    shard_progress: Mapped[dict | None]  # shard -> its phase, slice, epoch, samples/s, ETA (0010)


class DeletionRequestRow(Base):
    __tablename__ = "deletion_requests"
    __table_args__ = (UniqueConstraint("caller", "idempotency_key", name="uq_deletion_requests_idempotency"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128), index=True)
    caller: Mapped[str] = mapped_column(String(32), index=True)
    method: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | completed | failed
    failure_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    trace_id: Mapped[str | None] = mapped_column(String(64))  # X-Request-ID of the POST (0009), for the logs
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]  # accepted + LETHE_DEADLINE_DAYS (0003)
    # The request's forget set is sealed in the engine's evidence vault under this key
    # (AES-256-GCM, hex) until every outcome ends or LETHE_EVIDENCE_MAX_HOURS pass;
    # destroying it clears the key (crypto-shredding) and the files follow (0005).
    evidence_key: Mapped[str | None] = mapped_column(String(64))
    evidence_held_at: Mapped[datetime | None]
    evidence_destroyed_at: Mapped[datetime | None]
    evidence_destroyed_reason: Mapped[str | None] = mapped_column(String(200))
    overdue_at: Mapped[datetime | None]  # when it was first seen past due_at, not completed (0011)


class DeletionOutcomeRow(Base):
    """One deletion request's result for one model."""

    __tablename__ = "deletion_outcomes"
    __table_args__ = (Index("ix_deletion_outcomes_model_status", "model", "status"),)

    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id"), primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | running | completed | failed
    job_id: Mapped[str | None] = mapped_column(String(36))
    version: Mapped[int | None]
    method: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict | None]
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")  # failed tries so far (0003)
    retry_at: Mapped[datetime | None]  # a pending retry waits until then
    transient_failures: Mapped[int] = mapped_column(default=0, server_default="0")  # not counted in attempts (0008)


class AuditEventRow(Base):
    """Append-only and hash-chained: ``hash`` covers this row's content and ``prev_hash``.

    ``at`` and ``data`` are stored as the exact text that was hashed, so no database
    type conversion can change what verification recomputes.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str | None] = mapped_column(String(128), index=True)
    request_id: Mapped[str | None] = mapped_column(String(36), index=True)
    model: Mapped[str | None] = mapped_column(String(64), index=True)
    version: Mapped[int | None]
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class OutboxRow(Base):
    """A task to send to the broker, written in the same transaction as the change behind it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookRow(Base):
    """A subscriber: events of these types are POSTed to ``url``, signed with ``secret``
    (Standard Webhooks). Removing one keeps its row (``deleted_at``) and its deliveries."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list]
    secret: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class WebhookDeliveryRow(Base):
    """One event for one webhook: written in the transaction of the change it reports
    (an outbox), sent by the webhook sender until it is delivered or a day has passed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the exact body that is signed and sent
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed | cancelled
    attempts: Mapped[int] = mapped_column(default=0)
    attempt_log: Mapped[list] = mapped_column(default=list)  # [{at, status_code, error, ms}]
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class SigningKeyRow(Base):
    """The public key (JWK) of every key that ever signed a certificate (0004)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_jwk: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
