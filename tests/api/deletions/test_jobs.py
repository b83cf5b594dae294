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


def test_job_state_round_trips_and_reads_the_flat_form_saved_before_it_was_typed(ready, monkeypatch):
    """A job planned by an earlier release (one flat dict) still resumes after an upgrade."""
    from app.jobs.flow import Attempt, JobFlow, JobState
    from app.jobs.service import running_state

    saved, plan_job = {}, JobFlow._plan

    def plan_and_keep(self, claim):
        state = plan_job(self, claim)
        with ready.app_.state.sessionmaker() as s:
            saved.update(running_state(s, claim.job_id))
        return state

    monkeypatch.setattr(JobFlow, "_plan", plan_and_keep)
    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "method": "ga"}, headers=C)
    run_worker_inline(ready.app_)
    state = JobState.from_dict(saved)
    assert JobState.from_dict(state.to_dict()) == state
    assert state.plan.method.name == "ga" and state.attempt == Attempt(requested_method="ga")
    flat = {**state.plan.to_dict(), "attempt": 2, "phase": "spot_check", "requested_method": "ga",
            "checked_version": 2}
    old = JobState.from_dict(flat)
    assert old.plan == state.plan
    assert old.attempt == Attempt(number=2, phase="spot_check", requested_method="ga", checked_version=2)
