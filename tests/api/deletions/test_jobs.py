"""Deletion jobs: a failed job fails its requests with a reason; a job is claimed once while its lease lasts."""
from __future__ import annotations

from tests.service_helpers import A, C, an_owner, run_worker_inline


def test_failed_job_fails_its_requests_with_a_reason(ready, monkeypatch):
    from workers.engine.engine import Engine

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Engine, "run_shard", broken)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "failed" and "disk on fire" in req["failure_reason"]
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_a_job_is_claimed_once_while_its_lease_lasts_and_resumed_after(ready):
    from datetime import timedelta

    from sqlalchemy import update

    from app.jobs.service import claim
    from app.tables import DatasetRow, utcnow

    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    factory = ready.app_.state.sessionmaker
    with factory() as s:
        first = claim(s, "m", lease_seconds=60)
        s.commit()
    with factory() as s:
        assert claim(s, "m", lease_seconds=60) is None  # a redelivered advance: the job is running
    with factory() as s:  # the worker died: its lease ran out
        s.execute(update(DatasetRow).values(busy_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    with factory() as s:
        resumed = claim(s, "m", lease_seconds=60)
        s.commit()
    assert resumed.job_id == first.job_id and resumed.request_ids == first.request_ids
    events = ready.get("/v1/audit?model=m&limit=1000", headers=A).json()["events"]
    assert [e["kind"] for e in events][-1] == "job.resumed"
