"""What the job routes answer."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ShardProgress(BaseModel):
    model_config = ConfigDict(extra="allow")  # slice, epoch, samples/s, ETA while training

    shard: int
    phase: str  # running | training | done
    updated_at: str | None = None


class JobProgress(BaseModel):
    id: str
    kind: str
    model: str
    status: str
    phase: str  # queued | planning | running | verifying | completed | failed
    attempt: int
    progress: str | None  # the latest progress line
    shards_total: int  # shards this attempt (re)trains or unlearns
    shards_done: int
    shards: list[ShardProgress]
    eta_s: float | None  # the slowest training shard's
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
