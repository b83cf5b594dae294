"""Job routes: a job's live progress, as a document and as Server-Sent Events."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.db import session_scope
from app.deps import CallerDep, SessionDep
from app.jobs import service
from app.jobs.schemas import JobProgress

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


@router.get("/{job_id}", response_model=JobProgress)
def get_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobProgress:
    """A job's status and phase, each shard's slice, epoch, samples/s and ETA, and the
    job's ETA (the slowest running shard's). Admins see every job; a client the jobs
    that serve its own deletion requests (each outcome names its job)."""
    return JobProgress(**service.view(session, caller=caller, job_id=job_id))


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    """Server-Sent Events: a ``progress`` event (the job document, as ``GET`` gives it)
    whenever it changes, a comment every 15 s to keep the connection open, and a last
    ``end`` event when the job completes or fails; then the stream closes."""
    factory = request.app.state.sessionmaker

    def read() -> dict:
        with session_scope(factory) as session:
            return service.view(session, caller=caller, job_id=job_id)

    first = await run_in_threadpool(read)  # a 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        last, quiet, doc = None, 0.0, first
        while True:
            text = json.dumps(JobProgress(**doc).model_dump(mode="json"), default=_iso)
            if text != last:
                yield f"event: progress\ndata: {text}\n\n"
                last, quiet = text, 0.0
            if doc["status"] in ("completed", "failed"):
                yield f"event: end\ndata: {json.dumps({'status': doc['status']})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)
            quiet += POLL_SECONDS
            if quiet >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet = 0.0
            doc = await run_in_threadpool(read)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _iso(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)
