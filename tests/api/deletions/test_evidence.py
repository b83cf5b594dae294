"""Evidence per request (issue 11, point 4): the owner's rows are sealed for the request,
every model it touches is measured on them, and they are destroyed (key first) when
the request ends or LETHE_EVIDENCE_MAX_HOURS pass, whichever is first."""
from __future__ import annotations

import json
import logging

import jwt
import numpy as np
import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.engine import build_engine
from app.jobs.service import requeue_stalled
from app.tables import DeletionOutcomeRow, DeletionRequestRow, OutboxRow, utcnow
from tests.service_helpers import A, C, TINY_MODEL, an_owner, change_settings, run_worker_inline


def _second_model(ready) -> None:
    assert ready.post("/v1/models", json={**TINY_MODEL, "name": "m2"}, headers=A).status_code == 202
    run_worker_inline(ready.app_)


def _request(ready, owner: str, **body) -> str:
    r = ready.post("/v1/deletion-requests", json={"owner_id": owner, **body}, headers=C)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _row(ready, rid: str) -> DeletionRequestRow:
    with session_scope(ready.app_.state.sessionmaker) as s:
        return s.get(DeletionRequestRow, rid)


def _events(ready, rid: str, kind: str) -> list[dict]:
    events = ready.get(f"/v1/audit?request_id={rid}&limit=200", headers=A).json()["events"]
    return [e for e in events if e["kind"] == kind]


def _sealed(ready, rid: str):
    return ready.app_.state.settings.data_dir / "evidence" / rid


@pytest.mark.parametrize("method", ["exact", "ga"])
def test_every_model_of_a_request_is_measured_on_the_owners_rows(ready, method):
    change_settings(ready, gate_ua_tolerance=1.0, gate_mia_tolerance=1.0, gate_max_ta_drop=1.0, gate_beat_no_op=False)
    _second_model(ready)
    owner = an_owner(ready)
    n_rows = len(build_engine(ready.app_.state.settings).dataset("digits").owner_sample_ids(owner))
    rid = _request(ready, owner, method=method)
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed" and sorted(o["model"] for o in req["outcomes"]) == ["m", "m2"]
    for outcome in req["outcomes"]:
        m = outcome["metrics"]
        assert m["forget_size"] == n_rows > 0, outcome
        assert m["ua"] is not None and m["mia_efficacy"] is not None
        assert "forget_metrics_unavailable" not in m
        assert outcome["published_method"] == method
    row = _row(ready, rid)
    assert row.evidence_key is None and row.evidence_destroyed_at is not None
    assert not _sealed(ready, rid).exists()
    (destroyed,) = _events(ready, rid, "request.evidence_destroyed")
    assert destroyed["data"]["reason"] == "request completed" and destroyed["data"]["held_since"]
    cert = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    claims = jwt.decode(cert, options={"verify_signature": False})
    assert claims["evidence"]["destroyed_at"] and claims["evidence"]["reason"] == "request completed"
    assert all(m["metrics"]["forget_size"] == n_rows for m in claims["models"])


def test_the_evidence_is_held_sealed_while_an_outcome_is_pending(ready, monkeypatch):
    """m2's job fails once (a retry is scheduled): the request is not over, so its rows
    stay sealed, and the retried job still measures on them."""
    from workers.engine.engine import Engine

    _second_model(ready)
    change_settings(ready, retry_backoff_seconds=3600)
    real, failed = Engine.run_shard, []

    def m2_fails_once(self, plan, shard, progress=None):
        if plan.model == "m2" and not failed:
            failed.append(plan.model)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, plan, shard, progress)

    monkeypatch.setattr(Engine, "run_shard", m2_fails_once)
    owner = an_owner(ready)
    ds = build_engine(ready.app_.state.settings).dataset("digits")
    mine = np.isin(ds.load_arrays().sample_ids, ds.owner_sample_ids(owner))
    rows = ds.load_arrays().x[mine]
    rid = _request(ready, owner)
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert failed and req["status"] != "completed"
    assert {o["model"]: o["status"] for o in req["outcomes"]} == {"m": "completed", "m2": "pending"}
    row = _row(ready, rid)
    assert row.evidence_key is not None and row.evidence_destroyed_at is None
    (sealed,) = _sealed(ready, rid).iterdir()
    data = sealed.read_bytes()
    assert not any(r.tobytes() in data for r in rows)  # encrypted at rest
    assert row.evidence_key.encode() not in data and bytes.fromhex(row.evidence_key) not in data

    with session_scope(ready.app_.state.sessionmaker) as s:  # the back-off is over
        s.execute(update(DeletionOutcomeRow).where(DeletionOutcomeRow.request_id == rid)
                  .values(retry_at=utcnow()))
        requeue_stalled(s)
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed"
    m2 = next(o for o in req["outcomes"] if o["model"] == "m2")
    assert m2["attempts"] == 1 and m2["metrics"]["forget_size"] == int(mine.sum()) and m2["metrics"]["ua"] is not None
    assert _row(ready, rid).evidence_key is None and not _sealed(ready, rid).exists()


def test_evidence_held_past_the_limit_is_destroyed_and_the_outcome_says_why(ready):
    _second_model(ready)
    change_settings(ready, evidence_max_hours=0)  # expires as soon as the first job has ended
    rid = _request(ready, an_owner(ready))
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed"
    first, second = sorted(req["outcomes"], key=lambda o: "forget_metrics_unavailable" in o["metrics"])
    assert first["metrics"]["forget_size"] > 0 and first["metrics"]["ua"] is not None
    why = second["metrics"]["forget_metrics_unavailable"]
    assert "no longer held" in why and "destroyed" in why
    assert "ua" not in second["metrics"] and "mia_efficacy" not in second["metrics"]
    (destroyed,) = _events(ready, rid, "request.evidence_destroyed")
    assert "LETHE_EVIDENCE_MAX_HOURS" in destroyed["data"]["reason"]
    cert = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    claims = jwt.decode(cert, options={"verify_signature": False})
    assert "LETHE_EVIDENCE_MAX_HOURS" in claims["evidence"]["reason"]
    assert sorted(bool(m["forget_metrics_unavailable"]) for m in claims["models"]) == [False, True]


def test_no_broker_message_or_log_line_holds_the_owner_or_the_reason(ready, caplog):
    caplog.set_level(logging.DEBUG)
    owner, reason = an_owner(ready), "please forget me, my phone is 555-0100"
    rid = _request(ready, owner, reason=reason)
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"
    with session_scope(ready.app_.state.sessionmaker) as s:
        messages = [json.dumps(p) for p in s.scalars(select(OutboxRow.payload))]
    assert messages  # the worker was driven through the outbox
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for text in (owner, reason):
        assert not any(text in m for m in messages)
        assert text not in logged


def test_evidence_expiring_during_an_approximate_job_replans_it_exactly(ready, monkeypatch):
    """The key is destroyed after planning (LETHE_EVIDENCE_MAX_HOURS): the shard cannot
    unlearn; that failure is not counted, and the retry plans the removal exactly."""
    from workers.engine.engine import Engine

    change_settings(ready, max_attempts=1, retry_backoff_seconds=0.0,
                    gate_ua_tolerance=1.0, gate_mia_tolerance=1.0, gate_max_ta_drop=1.0, gate_beat_no_op=False)
    real = Engine.run_shard

    def expire_then_run(self, plan, shard, progress=None):
        with session_scope(ready.app_.state.sessionmaker) as s:
            s.execute(update(DeletionRequestRow).values(evidence_key=None, evidence_destroyed_at=utcnow()))
        return real(self, plan, shard, progress)

    monkeypatch.setattr(Engine, "run_shard", expire_then_run)
    rid = _request(ready, an_owner(ready), method="ga")
    run_worker_inline(ready.app_)
    with session_scope(ready.app_.state.sessionmaker) as s:
        requeue_stalled(s)  # the reconciler queues the retry
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    (outcome,) = req["outcomes"]
    assert req["status"] == "completed" and outcome["attempts"] == 0, req
    assert outcome["published_method"] == "exact" and "forget_metrics_unavailable" in outcome["metrics"]


def test_a_model_trained_after_the_request_was_accepted_gets_an_outcome_at_erasure(ready):
    """m's job waits (a back-off) while m3 trains on the owner's rows; when m's job erases
    them, m3 is brought along (audit request.models_added) and no longer serves them."""
    from datetime import timedelta

    owner = an_owner(ready)
    rid = _request(ready, owner)
    with session_scope(ready.app_.state.sessionmaker) as s:
        s.execute(update(DeletionOutcomeRow).values(retry_at=utcnow() + timedelta(hours=1)))
    assert ready.post("/v1/models", json={**TINY_MODEL, "name": "m3"}, headers=A).status_code == 202
    run_worker_inline(ready.app_)  # m3 trains, on the owner's rows too
    with session_scope(ready.app_.state.sessionmaker) as s:
        s.execute(update(DeletionOutcomeRow).values(retry_at=utcnow()))
        requeue_stalled(s)
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed" and sorted(o["model"] for o in req["outcomes"]) == ["m", "m3"]
    m3 = next(o for o in req["outcomes"] if o["model"] == "m3")
    assert m3["version"] == 2 and m3["metrics"]["forget_size"] > 0  # measured on the sealed rows
    assert ready.get("/v1/models/m3/versions/1", headers=C).json()["status"] == "revoked"
    (added,) = _events(ready, rid, "request.models_added")
    assert added["data"]["models"] == ["m3"]


def test_the_sqlite_write_ahead_log_keeps_no_destroyed_key(ready):
    rid = _request(ready, an_owner(ready))
    with session_scope(ready.app_.state.sessionmaker) as s:  # the key, as it is while held
        from app.deletions.evidence import keys
        key = keys(s, [rid], create=True)[rid].hex()
    run_worker_inline(ready.app_)
    assert _row(ready, rid).evidence_key is None
    data_dir = ready.app_.state.settings.data_dir
    for path in data_dir.glob("lethe.sqlite*"):
        assert key.encode() not in path.read_bytes(), path
