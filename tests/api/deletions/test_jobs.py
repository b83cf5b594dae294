"""Deletion jobs: failures are retried with back-off, then fail the request with a reason;
an admin can retry; deadlines; a job is claimed once while its lease lasts."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from app.tables import DeletionOutcomeRow, utcnow
from tests.service_helpers import A, C, an_owner, change_settings, run_worker_inline



def test_failed_job_fails_its_requests_with_a_reason(ready, monkeypatch):
    from workers.engine.engine import Engine

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Engine, "run_shard", broken)
    change_settings(ready, max_attempts=1)  # no retries left
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


def test_a_failed_outcome_is_retried_with_back_off_before_its_request_fails(ready, monkeypatch):
    from workers.engine.engine import Engine

    real, calls = Engine.run_shard, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the store went away")
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "run_shard", flaky)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)  # default back-off: the retry waits a minute
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    (outcome,) = req["outcomes"]
    assert req["status"] == "running" and outcome["status"] == "pending" and outcome["attempts"] == 1
    assert outcome["retry_at"] is not None and "the store went away" in outcome["error"]
    assert run_worker_inline(ready.app_) == 0  # not due yet: nothing runs
    change_settings(ready, retry_backoff_seconds=0.0)
    with ready.app_.state.sessionmaker() as s:  # the minute has passed
        s.execute(update(DeletionOutcomeRow).values(retry_at=utcnow()))
        s.commit()
    ready.app_.state.relay.reconcile()  # the reconciler queues the due retry
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed" and req["outcomes"][0]["version"] == 2
    kinds = [e["kind"] for e in ready.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]]
    assert kinds.count("request.retry_scheduled") == 1 and kinds[-2:] == [
        "request.completed", "request.evidence_destroyed"]


def test_after_the_last_attempt_an_admin_can_retry_a_failed_request(ready, monkeypatch):
    from workers.engine.engine import Engine

    real, broken = Engine.run_shard, {"on": True}

    def maybe(self, *a, **k):
        if broken["on"]:
            raise RuntimeError("disk on fire")
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "run_shard", maybe)
    change_settings(ready, retry_backoff_seconds=0.0)  # retried at once, three tries in all
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    assert ready.post(f"/v1/deletion-requests/{rid}/retry", headers=A).json()["code"] == "request_not_failed"
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "failed" and req["outcomes"][0]["attempts"] == 3
    assert ready.post(f"/v1/deletion-requests/{rid}/retry", headers=C).status_code == 403
    broken["on"] = False
    r = ready.post(f"/v1/deletion-requests/{rid}/retry", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["outcomes"][0]["attempts"] == 0
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"


def test_every_request_is_due_and_overdue_ones_are_listed(ready):
    done = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()
    run_worker_inline(ready.app_)
    ready.app_.state.intake.deadline = timedelta(days=-1)  # accepted from now on: past due at once
    late = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()
    assert late["due_at"] < late["created_at"] and late["overdue"] is True
    first = ready.get(f"/v1/deletion-requests/{done['id']}", headers=C).json()
    assert first["status"] == "completed" and first["overdue"] is False and first["due_at"] > first["created_at"]
    assert [r["id"] for r in ready.get("/v1/deletion-requests?overdue=true", headers=C).json()] == [late["id"]]
    run_worker_inline(ready.app_)
    assert ready.get("/v1/deletion-requests?overdue=true", headers=C).json() == []  # completed, not overdue


def test_a_transient_fault_never_uses_up_attempts_or_ends_the_request(ready, monkeypatch):
    """The database drops its connection at every try: the outcome is retried (its
    attempts stay 0), the request stays open however often it happens, and the reason
    names the fault without SQL; once the database is back, the request completes."""
    from sqlalchemy.exc import OperationalError

    from workers.engine.engine import Engine

    real, calls = Engine.run_shard, []

    def database_blinks(self, *a, **k):
        calls.append(1)
        if len(calls) <= 4:
            raise OperationalError("UPDATE datasets SET busy_until=%(busy_until)s", {"busy_until": 1},
                                   ConnectionResetError("server closed the connection unexpectedly"))
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "run_shard", database_blinks)
    change_settings(ready, max_attempts=1, retry_backoff_seconds=0.0)  # one real failure would end it
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    for _ in range(4):
        run_worker_inline(ready.app_)
        req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
        (outcome,) = req["outcomes"]
        if req["status"] == "completed":
            break
        assert req["status"] != "failed" and outcome["attempts"] == 0, req
        assert outcome["error"].startswith("transient_fault:") and "UPDATE" not in outcome["error"]
        ready.app_.state.relay.reconcile()  # the reconciler queues the due retry
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert len(calls) >= 5 and req["status"] == "completed" and req["outcomes"][0]["attempts"] == 0


def test_a_failure_reason_is_a_code_and_a_sentence_never_sql(ready, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    from workers.engine.engine import Engine

    def bad_statement(self, *a, **k):
        raise IntegrityError("INSERT INTO model_versions (model) VALUES (%(model)s)", {"model": "m"}, ValueError("dup"))

    monkeypatch.setattr(Engine, "run_shard", bad_statement)
    change_settings(ready, max_attempts=1)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "failed"
    assert "database_error: a database statement failed (IntegrityError)" in req["failure_reason"]
    assert "INSERT" not in req["failure_reason"] and "model_versions" not in req["failure_reason"]


def _outcome_row(client, rid):
    with client.app_.state.sessionmaker() as s:
        return s.get(DeletionOutcomeRow, (rid, "m"))


def test_transient_retries_back_off_further_each_time_and_are_capped(ready, monkeypatch):
    """Each transient failure in a row waits twice as long as the one before; after
    LETHE_MAX_TRANSIENT_FAILURES of them the next one counts as an attempt, so a fault
    that is wrongly taken for transient cannot retry a deletion forever."""
    from sqlalchemy.exc import OperationalError

    from workers.engine.engine import Engine

    def database_blinks(self, *a, **k):
        raise OperationalError("SELECT 1", {}, ConnectionResetError("server closed the connection unexpectedly"))

    monkeypatch.setattr(Engine, "run_shard", database_blinks)
    change_settings(ready, max_attempts=1, retry_backoff_seconds=10.0, max_transient_failures=2)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    waits = []
    for _ in range(3):
        before = utcnow()
        run_worker_inline(ready.app_)
        row = _outcome_row(ready, rid)
        if row.status == "failed":
            break
        waits.append((row.retry_at - before).total_seconds())
        assert row.attempts == 0 and row.status == "pending"
        with ready.app_.state.sessionmaker.begin() as s:  # the back-off has passed
            s.execute(update(DeletionOutcomeRow).values(retry_at=utcnow() - timedelta(seconds=1)))
        ready.app_.state.relay.reconcile()
    assert [round(w) for w in waits] == [10, 20]
    row = _outcome_row(ready, rid)
    assert row.status == "failed" and row.attempts == 1 and row.transient_failures == 3
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "failed" and "transient_fault" in req["failure_reason"]


def test_a_transient_fault_while_planning_training_queues_the_job_again(client, monkeypatch):
    """The database blinks while a new model's training is planned: the model keeps
    training (its job is queued again) instead of failing for good."""
    from sqlalchemy.exc import OperationalError

    from tests.service_helpers import TINY_MODEL
    from workers.engine.engine import Engine

    real, calls = Engine.plan_train, []

    def blinks_once(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, ConnectionResetError("server closed the connection unexpectedly"))
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "plan_train", blinks_once)
    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    assert client.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
    run_worker_inline(client.app_)
    model = client.get("/v1/models/m", headers=A).json()
    assert len(calls) == 2 and model["status"] == "ready", model
    events = [e["kind"] for e in client.get("/v1/audit?limit=500", headers=A).json()["events"]]
    assert "job.requeued" in events and "job.failed" not in events


def test_a_deletion_that_fails_for_good_after_erasure_withdraws_what_learned_from_the_rows(ready, monkeypatch):
    """The owner's rows are erased, then unlearning fails for good: the versions trained
    on those rows are withdrawn (410, nothing replaces them) instead of serving on."""
    from workers.engine.engine import Engine

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    assert ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[0.0] * 64]}, headers=C).status_code == 200
    monkeypatch.setattr(Engine, "run_shard", broken)
    change_settings(ready, max_attempts=1)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "failed"
    r = ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[0.0] * 64]}, headers=C)
    assert r.status_code == 410 and r.json()["code"] == "version_revoked" and r.json()["replaced_by"] is None
    assert "withdrawn" in r.json()["detail"]
    version = ready.get("/v1/models/m/versions/1", headers=A).json()
    assert version["status"] == "revoked" and version["revoked_at"] and version["replaced_by"] is None
    events = [e["kind"] for e in ready.get("/v1/audit?model=m&limit=500", headers=A).json()["events"]]
    assert "model.version_revoked" in events
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_a_deletion_that_fails_before_any_erasure_withdraws_nothing(ready, monkeypatch):
    from workers.engine.engine import Engine

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Engine, "erase_owners", broken)
    change_settings(ready, max_attempts=1)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "failed"
    assert ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[0.0] * 64]}, headers=C).status_code == 200


def test_a_job_coalesces_at_most_max_job_requests(ready):
    """Waiting requests are coalesced into one job up to LETHE_MAX_JOB_REQUESTS, oldest
    first; the rest go to the next job (a job must not grow without bound)."""
    change_settings(ready, max_job_requests=2)
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=3", headers=A).json()["owners"]]
    rids = [ready.post("/v1/deletion-requests", json={"owner_id": o}, headers=C).json()["id"] for o in owners]
    run_worker_inline(ready.app_)
    assert [ready.get(f"/v1/deletion-requests/{r}", headers=C).json()["status"] for r in rids] == ["completed"] * 3
    v2, v3 = (ready.get(f"/v1/models/m/versions/{n}", headers=A).json() for n in (2, 3))
    assert len(v2["requests"]) == 2 and len(v3["requests"]) == 1
    assert set(v2["requests"] + v3["requests"]) == set(rids)


def test_the_lease_is_kept_while_a_job_is_planned(ready, monkeypatch):
    """Erasing and sealing many owners can outlast the lease: the lease is renewed while
    the job is planned, so no second worker can take the job (its erasures would change
    the dataset under the first one's plan)."""
    import time

    from app.jobs import service as jobs
    from workers.engine.engine import Engine

    change_settings(ready, lease_seconds=2.0)
    real, taken = Engine.erase_owners, []

    def slow_erasure(self, *a, **k):
        time.sleep(3.0)  # past the 2 s lease
        with ready.app_.state.sessionmaker() as s:
            taken.append(jobs.claim(s, "m", 2.0))  # what the reconciler's advance would do
            s.rollback()
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "erase_owners", slow_erasure)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    assert taken == [None]
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"


def test_an_outcome_left_running_under_an_ended_job_is_taken_by_the_next_job(ready):
    """A request whose outcome was left running under a job that has ended (a stale
    worker's step racing a claim that resumed the job) is not stuck: the next claim
    makes it pending again and a new job completes it."""
    from app.jobs.service import claim
    from app.statuses import JobStatus, OutcomeStatus
    from app.tables import DatasetRow, JobRow

    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    factory = ready.app_.state.sessionmaker
    with factory() as s:
        stale = claim(s, "m", lease_seconds=60)
        s.commit()
    with factory() as s:  # the job ended, its dataset freed, but the outcome still names it
        s.execute(update(JobRow).where(JobRow.id == stale.job_id).values(status=JobStatus.FAILED))
        s.execute(update(DatasetRow).values(busy_job=None, busy_until=None))
        s.commit()
    with factory() as s:
        assert s.get(DeletionOutcomeRow, (rid, "m")).status == OutcomeStatus.RUNNING
        fresh = claim(s, "m", lease_seconds=60)
        s.commit()
    assert fresh is not None and fresh.job_id != stale.job_id and fresh.request_ids == [rid]
    with factory() as s:  # the reconciler's advance for it, run through the worker
        s.execute(update(DatasetRow).values(busy_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    from app.jobs.service import requeue_stalled
    with factory() as s:
        requeue_stalled(s)
        s.commit()
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"
