"""Purging revoked versions from the store: the engine's mark and sweep, with the running
jobs' blobs kept, the versions marked ``purged_at`` and an audit event per version
(digests and bytes, never contents).

Like the job flow it owns its units of work: it reads the running jobs, lets the engine
delete, then records what went, each in its own transaction (deleting blobs must not
hold a database transaction open).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.audit.service import append
from app.db import session_scope
from app.jobs.state import JobState
from app.settings import Settings
from app.statuses import JobStatus
from app.tables import JobRow, ModelVersionRow
from workers.engine.engine import Engine
from workers.engine.purge import PurgeReport, plan_blobs

log = logging.getLogger("lethe.purge")


def _running_blobs(session: Session) -> set[str]:
    keep = set()
    for state in session.scalars(select(JobRow.plan).where(JobRow.status == JobStatus.RUNNING)):
        if state:
            keep |= plan_blobs(JobState.from_dict(state).plan)
    return keep


def purge(sessions: sessionmaker[Session], engine: Engine, settings: Settings, *, actor: str,
          dry_run: bool = False) -> PurgeReport:
    """Delete what revoked versions learned, ``settings.purge_after_hours`` after their
    revocation; record and audit each purged version."""
    cutoff = datetime.now(timezone.utc) - timedelta(hours=settings.purge_after_hours)
    with session_scope(sessions) as s:
        keep = _running_blobs(s)
    report = engine.purge(keep=keep, due=lambda r: datetime.fromisoformat(r["revoked_at"]) <= cutoff,
                          dry_run=dry_run)
    if dry_run:
        return report
    with session_scope(sessions) as s:
        for p in report.purged:
            _record(s, p["model"], p["version"], p["digests"], p["bytes"], actor=actor)
        # A sweep that died between the store's purge record and this transaction left
        # versions purged in the store but not here: the store's record says what went.
        for row in s.scalars(select(ModelVersionRow).where(
                ModelVersionRow.revoked_at.is_not(None), ModelVersionRow.purged_at.is_(None))).all():
            note = engine.store.purge(row.model, row.version)
            if note is not None:
                _record(s, row.model, row.version, note["digests"], note["bytes"], actor=actor)
    if report.purged:
        log.info("purged %d revoked versions, %d bytes", len(report.purged), report.freed_bytes)
    return report


def _record(session: Session, model: str, version: int, digests: list[str], freed: int, *, actor: str) -> None:
    """Mark the version purged and audit it, once (concurrent sweeps serialise on the row)."""
    row = session.scalars(select(ModelVersionRow).where(
        ModelVersionRow.model == model, ModelVersionRow.version == version).with_for_update()).first()
    if row is None or row.purged_at is not None:
        return  # another sweep recorded it first
    row.purged_at = datetime.now(timezone.utc)
    append(session, "store.purged", actor=actor, model=model, version=version,
           data={"digests": digests, "bytes": freed})
