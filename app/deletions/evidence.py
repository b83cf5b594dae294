"""Each deletion request's evidence: its owner's raw rows, sealed in the engine's vault
(``workers.engine.vault``) when a job erases them, so every model the request touches,
on every dataset, unlearns from and is measured on the owner's real rows.

The request's key (32 random bytes) lives here, in the database, never beside the
sealed files. The evidence is destroyed when every outcome of the request has ended
(completed or failed) or ``LETHE_EVIDENCE_MAX_HOURS`` after it was sealed, whichever
comes first: the key is cleared in the same transaction as the change that ended it
(crypto-shredding, audit ``request.evidence_destroyed``), and the files are deleted
after the commit by :func:`sweep` (a crash in between leaves ciphertext without a key,
which the next sweep deletes).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.audit.service import append
from app.db import session_scope
from app.tables import DeletionRequestRow, utcnow
from workers.engine.engine import Engine

log = logging.getLogger("lethe.evidence")


def keys(session: Session, requests: Iterable[str], *, create: bool = False) -> dict[str, bytes]:
    """The held keys of ``requests``; with ``create``, a new key for each request that
    has none and was never destroyed (the first writer wins, so concurrent jobs on two
    datasets of one request seal under the same key) and its hold clock started."""
    requests = sorted(set(requests))
    if not requests:
        return {}
    if create:
        now = utcnow()
        for request in requests:
            session.execute(
                update(DeletionRequestRow)
                .where(DeletionRequestRow.id == request, DeletionRequestRow.evidence_key.is_(None),
                       DeletionRequestRow.evidence_destroyed_at.is_(None))
                .values(evidence_key=AESGCM.generate_key(bit_length=256).hex(), evidence_held_at=now)
            )
    rows = session.execute(select(DeletionRequestRow.id, DeletionRequestRow.evidence_key).where(
        DeletionRequestRow.id.in_(requests), DeletionRequestRow.evidence_key.is_not(None))).all()
    return {request: bytes.fromhex(key) for request, key in rows}


class DatabaseKeyring:
    """The engine's keyring (``workers.engine.vault.Keyring``) over the database; each
    call is its own short transaction."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def keys(self, requests: Iterable[str], *, create: bool = False) -> dict[str, bytes]:
        with session_scope(self.sessions) as s:
            return keys(s, requests, create=create)


def destroy(session: Session, request: DeletionRequestRow, reason: str, *, actor: str) -> None:
    """Forget the request's evidence key (its sealed rows can no longer be read) and
    audit it; a key is never made for it again. The files go with the next sweep."""
    if request.evidence_destroyed_at is not None:
        return
    held = request.evidence_key is not None
    request.evidence_key = None
    request.evidence_destroyed_at, request.evidence_destroyed_reason = utcnow(), reason[:200]
    if held:
        append(session, "request.evidence_destroyed", actor=actor, owner_id=request.owner_id, request_id=request.id,
               data={"reason": reason, "held_since": request.evidence_held_at.isoformat()
                     if request.evidence_held_at else None})


def expire(session: Session, max_hours: float, *, actor: str) -> int:
    """Destroy every request's evidence held longer than ``max_hours``, even though some
    outcome is still pending (it will say ``forget_metrics_unavailable``)."""
    cutoff = utcnow() - timedelta(hours=max_hours)
    expired = session.scalars(select(DeletionRequestRow).where(
        DeletionRequestRow.evidence_key.is_not(None), DeletionRequestRow.evidence_held_at <= cutoff)
        .order_by(DeletionRequestRow.id).with_for_update()).all()
    for request in expired:
        destroy(session, request, f"held for LETHE_EVIDENCE_MAX_HOURS ({max_hours:g} h) before every outcome "
                "ended", actor=actor)
    return len(expired)


def sweep(sessions: sessionmaker[Session], engine: Engine, *, max_hours: float, actor: str) -> list[str]:
    """Expire evidence held too long, then delete every sealed file whose key is gone;
    the requests whose files went."""
    held = engine.vault.held()  # listed before the keys are read: a file sealed later is not a candidate
    with session_scope(sessions) as s:
        expire(s, max_hours, actor=actor)
        live = keys(s, held)
    gone = engine.vault.sweep(r for r in held if r not in live)
    if gone:
        log.info("deleted the sealed evidence of %d requests", len(gone))
        _truncate_sqlite_wal(sessions)
    return gone


def _truncate_sqlite_wal(sessions: sessionmaker[Session]) -> None:
    """On the embedded SQLite database a cleared key's old page can outlive the row in the
    write-ahead log (``secure_delete`` covers the main file only): checkpoint and
    truncate it. Best effort: a reader holding the log open makes it a no-op."""
    bind = sessions.kw.get("bind")
    if bind is None or bind.dialect.name != "sqlite":
        return
    raw = bind.raw_connection()  # outside a transaction: a checkpoint cannot run inside one
    try:
        raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
