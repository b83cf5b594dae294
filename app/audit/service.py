"""The audit trail: append-only, hash-chained events. Ids, digests and numbers only.

Each event's ``hash`` is the sha256 of its canonical content, which includes the
previous event's hash, so editing, deleting or reordering any row breaks every hash
after it. Appends are serialised (a PostgreSQL advisory lock; SQLite transactions
already take the write lock up front), and ``seq`` is the primary key, so two
appends can never claim the same place in the chain.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from app.tables import AuditEventRow, utcnow

GENESIS = "0" * 64
_LOCK_KEY = 0x4C65746865  # "Lethe": the advisory lock that serialises appends


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(row: AuditEventRow) -> str:
    content = {
        "seq": row.seq,
        "at": row.at,
        "actor": row.actor,
        "kind": row.kind,
        "owner_id": row.owner_id,
        "request_id": row.request_id,
        "model": row.model,
        "version": row.version,
        "data": row.data,
        "prev_hash": row.prev_hash,
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclass
class Event:
    """An audit event before it has its place in the chain."""

    kind: str
    actor: str
    owner_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    version: int | None = None
    data: dict | None = None


def append(session: Session, kind: str, *, actor: str, owner_id: str | None = None,
           request_id: str | None = None, model: str | None = None, version: int | None = None,
           data: dict | None = None) -> AuditEventRow:
    """Add one event at the end of the chain, in the caller's transaction.

    Call it last in a unit of work: the chain stays locked until the commit.
    """
    return append_many(session, [Event(kind, actor, owner_id, request_id, model, version, data)])[0]


def append_many(session: Session, events: list[Event]) -> list[AuditEventRow]:
    """Add events at the end of the chain in order, in the caller's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    last = session.execute(select(AuditEventRow.seq, AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)).first()
    seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
    at = utcnow().isoformat(timespec="microseconds")
    rows = []
    for e in events:
        seq += 1
        row = AuditEventRow(seq=seq, at=at, actor=e.actor, kind=e.kind, owner_id=e.owner_id,
                            request_id=e.request_id, model=e.model, version=e.version,
                            data=canonical_json(e.data or {}), prev_hash=prev)
        row.hash = prev = event_hash(row)
        rows.append(row)
    # One Core executemany: cheaper than the ORM's unit of work for a batch of events.
    session.execute(insert(AuditEventRow), [{c.key: getattr(r, c.key) for c in AuditEventRow.__table__.columns}
                                            for r in rows])
    return rows


@dataclass
class ChainReport:
    ok: bool
    events: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session, batch: int = 2000) -> ChainReport:
    """Walk the whole chain in order and recompute every link."""
    prev, expected_seq, count = GENESIS, 1, 0
    stmt = select(AuditEventRow).order_by(AuditEventRow.seq).execution_options(yield_per=batch)
    for row in session.scalars(stmt):
        problem = None
        if row.seq != expected_seq:
            problem = f"expected event {expected_seq}, found {row.seq}: events are missing"
        elif row.prev_hash != prev:
            problem = "prev_hash does not match the previous event's hash"
        elif event_hash(row) != row.hash:
            problem = "content does not match its hash: the event was edited"
        if problem:
            return ChainReport(False, count, prev, first_bad_seq=row.seq, problem=problem)
        prev, expected_seq, count = row.hash, row.seq + 1, count + 1
    return ChainReport(True, count, prev)


@dataclass
class AuditFilter:
    owner_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _utc_text(at: datetime) -> str:
    """The form ``at`` is stored in (UTC ISO text), so comparing the text compares times."""
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    return at.isoformat(timespec="microseconds")


def query(session: Session, flt: AuditFilter, *, after: int = 0, limit: int = 100) -> list[AuditEventRow]:
    """Events in chain order after ``after`` (a seq cursor), filtered."""
    stmt = select(AuditEventRow).where(AuditEventRow.seq > after)
    if flt.owner_id is not None:
        stmt = stmt.where(AuditEventRow.owner_id == flt.owner_id)
    if flt.request_id is not None:
        stmt = stmt.where(AuditEventRow.request_id == flt.request_id)
    if flt.model is not None:
        stmt = stmt.where(AuditEventRow.model == flt.model)
    if flt.since is not None:
        stmt = stmt.where(AuditEventRow.at >= _utc_text(flt.since))
    if flt.until is not None:
        stmt = stmt.where(AuditEventRow.at < _utc_text(flt.until))
    return list(session.scalars(stmt.order_by(AuditEventRow.seq).limit(limit)))
