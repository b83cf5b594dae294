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

    def __init__(self, sessions: sessionmaker[Session], job_id: str, lease_seconds: float):
        self.sessions, self.job_id, self.lease_seconds = sessions, job_id, lease_seconds
        self.progress: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def report(self, msg: str) -> None:
        log.info(msg)
        self.progress = msg

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # Often enough to show training progress, and well inside the lease.
        lease = self.lease_seconds
        while not self._stop.wait(min(lease / 4, 5.0)):
            try:
                with session_scope(self.sessions) as s:
                    jobs.renew_lease(s, self.job_id, lease, self.progress)
            except Exception:
                log.exception("could not renew the lease of job %s", self.job_id)
