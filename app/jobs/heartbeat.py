"""Keeping a running job's dataset lease while a long step runs."""
from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import service as jobs

log = logging.getLogger("lethe.worker")


class Heartbeat:
    """Renews the job's dataset lease from a side thread while a long step runs, and
    carries the step's latest progress line to the job row."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, lease_seconds: float, *,
                 shard: int | None = None):
        self.sessions, self.job_id, self.lease_seconds, self.shard = sessions, job_id, lease_seconds, shard
        self.progress: str | None = None
        self.state: dict | None = None  # the shard's latest structured progress (epochs, samples/s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def report(self, msg: str | None, state: dict | None = None) -> None:
        """A progress line (logged, shown on the job) and/or the shard's structured progress."""
        if msg:
            log.info(msg)
            self.progress = msg
        if state is not None:
            self.state = state

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.shard is not None and self.state is not None:
            self._renew()  # the shard's last state ("done") is not left to a next beat

    def _run(self) -> None:
        # Often enough to show training progress, and well inside the lease.
        while not self._stop.wait(min(self.lease_seconds / 4, 5.0)):
            self._renew()

    def _renew(self) -> None:
        try:
            with session_scope(self.sessions) as s:
                jobs.renew_lease(s, self.job_id, self.lease_seconds, self.progress, self.shard, self.state)
        except Exception:
            log.exception("could not renew the lease of job %s", self.job_id)
