"""The transactional outbox: work for the broker is written in the same transaction as
the change that needs it, and a relay sends it after commit.

If the broker is down, rows wait and are retried; if the relay dies between sending
and marking a row sent, the row is sent again, which the tasks tolerate (they are
idempotent). A reconciler re-queues work whose message or worker was lost.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.tables import OutboxRow, utcnow

log = logging.getLogger("lethe.outbox")
ADVANCE = "lethe.advance"  # "look at this model's pending work": the one task the API sends


def enqueue(session: Session, task: str, payload: dict) -> OutboxRow:
    row = OutboxRow(task=task, payload=payload)
    session.add(row)
    return row


def enqueue_advance(session: Session, model: str) -> OutboxRow:
    return enqueue(session, ADVANCE, {"model": model})


def relay_batch(factory: sessionmaker[Session], send, limit: int = 500) -> int:
    """Send up to ``limit`` unsent rows in id order; return how many rows were marked sent.

    ``send(task, payload)`` publishes one message; identical messages in one batch are
    sent once. Rows are locked with SKIP LOCKED, so several relays never send the same
    row at the same time. A row is marked sent only after its message went out.
    """
    with factory() as session:
        rows = session.execute(
            select(OutboxRow.id, OutboxRow.task, OutboxRow.payload).where(OutboxRow.sent_at.is_(None))
            .order_by(OutboxRow.id).limit(limit).with_for_update(skip_locked=True)
        ).all()
        sent_ids, seen, failed = [], set(), None
        for row in rows:
            key = (row.task, json.dumps(row.payload, sort_keys=True))
            if key not in seen:
                try:
                    send(row.task, row.payload)
                except Exception as exc:  # broker down: keep this row and the rest for the next round
                    failed = (row.id, f"{type(exc).__name__}: {exc}"[:500])
                    log.warning("outbox: cannot send %s #%d yet: %s", row.task, row.id, failed[1])
                    break
                seen.add(key)
            sent_ids.append(row.id)
        if sent_ids:
            session.execute(update(OutboxRow).where(OutboxRow.id.in_(sent_ids))
                            .values(sent_at=utcnow(), attempts=OutboxRow.attempts + 1, last_error=None))
        if failed:
            session.execute(update(OutboxRow).where(OutboxRow.id == failed[0])
                            .values(attempts=OutboxRow.attempts + 1, last_error=failed[1]))
        session.commit()
        return len(sent_ids)


class Relay:
    """A background thread that drains the outbox: woken at once by ``poke()`` after a
    commit, and every ``interval`` seconds anyway; it also runs ``reconcile`` now and then."""

    def __init__(self, factory: sessionmaker[Session], send, *, interval: float, reconcile=None,
                 reconcile_interval: float = 30.0):
        self.factory, self.send = factory, send
        self.interval, self.reconcile, self.reconcile_interval = interval, reconcile, reconcile_interval
        self.min_gap = min(0.05, interval)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lethe-outbox-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        last_reconcile, failures = 0.0, 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.reconcile and time.monotonic() - last_reconcile >= self.reconcile_interval:
                    last_reconcile = time.monotonic()
                    self.reconcile()
                while relay_batch(self.factory, self.send) and not self._stop.is_set():
                    pass
                failures = failures + 1 if self._failing() else 0
            except Exception:
                failures += 1
                log.exception("outbox relay round failed; retrying")
            # Back off while the broker or database is down; a poke still wakes us at once.
            self._wake.wait(min(self.interval * 2 ** min(failures, 6), 10.0))
            # Under load, pokes arrive faster than rounds: a short pause lets one round
            # carry many rows (and send one message per model) instead of one row each.
            self._stop.wait(self.min_gap)

    def _failing(self) -> bool:
        """An unsent row whose last send failed: the broker is (still) down."""
        with self.factory() as session:
            return session.scalars(select(OutboxRow.id).where(
                OutboxRow.sent_at.is_(None), OutboxRow.last_error.is_not(None)).limit(1)).first() is not None
