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
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryError, Retrying, retry_if_exception_type, wait_exponential

from app import logs
from app.db import session_scope
from app.tables import OutboxRow, utcnow

log = logging.getLogger("lethe.outbox")
ADVANCE = "lethe.advance"  # "look at this model's pending work": the one task the API sends


def enqueue(session: Session, task: str, payload: dict) -> OutboxRow:
    """Add work for the broker to the caller's transaction; whoever commits it pokes the
    relay (``has_outbox_rows`` says whether to)."""
    row = OutboxRow(task=task, payload=payload)
    session.add(row)
    session.info["outbox"] = True
    return row


def has_outbox_rows(session: Session) -> bool:
    return bool(session.info.get("outbox"))


def enqueue_advance(session: Session, model: str, *, trace: list[str] | None = None) -> OutboxRow:
    """An ``advance`` of ``model``; ``trace``: the request ids (``app.logs``) of the HTTP
    requests that made the work, so the task's logs carry them."""
    return enqueue(session, ADVANCE, {"model": model, **({"trace": trace} if trace else {})})


def unsent_advances(session: Session) -> set[str]:
    """Models with an ``advance`` waiting in the outbox."""
    return {p.get("model") for p in session.scalars(select(OutboxRow.payload).where(
        OutboxRow.sent_at.is_(None), OutboxRow.task == ADVANCE))}


def prune_sent(session: Session, older_than: timedelta) -> None:
    session.execute(delete(OutboxRow).where(OutboxRow.sent_at < utcnow() - older_than))


def relay_batch(factory: sessionmaker[Session], send, limit: int = 500) -> int:
    """Send up to ``limit`` unsent rows in id order; return how many rows were marked sent.

    ``send(task, payload)`` publishes one message; identical messages in one batch are
    sent once. Rows are locked with SKIP LOCKED, so several relays never send the same
    row at the same time. A row is marked sent only after its message went out.
    """
    with session_scope(factory) as session:
        rows = session.execute(
            select(OutboxRow.id, OutboxRow.task, OutboxRow.payload).where(OutboxRow.sent_at.is_(None))
            .order_by(OutboxRow.id).limit(limit).with_for_update(skip_locked=True)
        ).all()
        sent_ids, seen, failed = [], set(), None
        for row in rows:
            # the same work once; its trace ids only label logs (the job binds all its requests')
            key = (row.task, json.dumps({k: v for k, v in row.payload.items() if k != "trace"}, sort_keys=True))
            if key not in seen:
                try:
                    with logs.bind(request_ids=row.payload.get("trace")):
                        send(row.task, row.payload)
                        log.info("outbox: sent %s #%d", row.task, row.id)
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
        return len(sent_ids)


class BrokerDown(Exception):
    """An unsent row's last send failed: the broker is (still) down."""


class Relay:
    """A background thread that drains the outbox: woken at once by ``poke()`` after a
    commit, and every ``interval`` seconds anyway; it also runs ``reconcile`` now and then.

    While the broker or the database is down, rounds are retried with exponential
    back-off (tenacity), up to 10 s apart; a poke still wakes the relay at once.
    """

    def __init__(self, factory: sessionmaker[Session], send, *, interval: float, reconcile=None,
                 reconcile_interval: float = 30.0):
        self.factory, self.send = factory, send
        self.interval, self.reconcile, self.reconcile_interval = interval, reconcile, reconcile_interval
        self.min_gap = min(0.05, interval)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reconcile = 0.0

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
        retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=self.interval, max=10.0),
            stop=lambda _: self._stop.is_set(),
            sleep=self._pause,
            before_sleep=lambda state: log.warning("outbox relay round failed (%s); retrying",
                                                   state.outcome.exception()),
        )
        while not self._stop.is_set():
            self._wake.clear()
            try:
                retrying(self._round)
            except RetryError:
                return  # stopped while failing
            self._pause(self.interval)

    def _round(self) -> None:
        if self.reconcile and time.monotonic() - self._last_reconcile >= self.reconcile_interval:
            self._last_reconcile = time.monotonic()
            self.reconcile()
        while relay_batch(self.factory, self.send) and not self._stop.is_set():
            pass
        if self._failing():
            raise BrokerDown("an outbox row could not be sent")

    def _pause(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()
        # Under load, pokes arrive faster than rounds: a short pause lets one round carry
        # many rows (and send one message per model) instead of one row each.
        self._stop.wait(self.min_gap)

    def _failing(self) -> bool:
        with self.factory() as session:
            return session.scalars(select(OutboxRow.id).where(
                OutboxRow.sent_at.is_(None), OutboxRow.last_error.is_not(None)).limit(1)).first() is not None
