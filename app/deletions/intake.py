"""Group commit for deletion intake.

Each request handler hands its validated request to the ``Intake`` of its process and
awaits the result. One writer takes every request waiting at that moment and accepts
them in one transaction, then answers them all. Nothing is answered 202 before its
transaction commits, so an accepted request is always in the database.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import faults
from app.db import session_scope
from app.deletions.service import Accepted, Submission, accept_many
from app.errors import ApiError
from workers.engine.engine import Engine

log = logging.getLogger("lethe.intake")


class Intake:
    def __init__(self, factory: sessionmaker[Session], engine: Engine, on_commit=lambda: None, max_batch: int = 256,
                 deadline: timedelta = timedelta(days=30)):
        self.factory, self.engine, self.on_commit, self.max_batch = factory, engine, on_commit, max_batch
        self.deadline = deadline
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="lethe-intake")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, sub: Submission) -> Accepted:
        """Accept one request (with whatever else is waiting); raises its ApiError."""
        if self._task is None:  # not started (e.g. no lifespan): accept it alone
            result = (await run_in_threadpool(self.write, [sub]))[0]
        else:
            future = asyncio.get_running_loop().create_future()
            await self._queue.put((sub, future))
            result = await future
        if isinstance(result, ApiError):
            raise result
        return result

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await run_in_threadpool(self.write, [sub for sub, _ in batch])
            except Exception as exc:  # nothing was committed: every caller gets the error
                log.exception("accepting %d deletion requests failed", len(batch))
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception) and not isinstance(result, ApiError):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def write(self, subs: list[Submission]) -> list[Accepted | ApiError | Exception]:
        """Accept ``subs`` in one transaction. If it fails for any reason, fall back to one
        transaction per request, so one caller's request can fail only itself (an
        Idempotency-Key that raced with another process replays; anything else that
        fails alone is that request's error, returned in its place). A transient fault
        (the database dropped the connection, perhaps during COMMIT) is not split: the
        group may have committed, and writing it again one by one could accept a request
        twice; every caller in the group gets it (503, retry with the same key)."""
        try:
            with session_scope(self.factory) as session:  # one unit of work per batch
                results = accept_many(session=session, engine=self.engine, subs=subs, deadline=self.deadline)
        except Exception as exc:
            if faults.is_transient(exc):
                raise
            if len(subs) > 1:
                log.warning("a group of %d deletion requests failed (%s); accepting them one by one",
                            len(subs), type(exc).__name__)
                results = []
                for sub in subs:
                    try:
                        results.extend(self.write([sub]))
                    except Exception as alone:  # this request's own failure
                        results.append(alone)
                return results
            if not isinstance(exc, IntegrityError):
                raise
            with session_scope(self.factory) as session:  # the other process committed the key first
                results = accept_many(session=session, engine=self.engine, subs=subs, deadline=self.deadline)
        if any(isinstance(r, Accepted) and not r.replayed for r in results):
            self.on_commit()
        return results
