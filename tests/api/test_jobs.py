"""GET /v1/jobs/{id} and its Server-Sent Events: a job's phase and each shard's progress."""
from __future__ import annotations

import json

from tests.service_helpers import A, C, C2, an_owner, run_worker_inline


def _delete(client) -> dict:
    r = client.post("/v1/deletion-requests", json={"owner_id": an_owner(client)}, headers=C)
    assert r.status_code == 202
    run_worker_inline(client.app_)
    return client.get(f"/v1/deletion-requests/{r.json()['id']}", headers=C).json()


def test_a_finished_job_shows_every_shard_it_ran(ready):
    req = _delete(ready)
    (outcome,) = req["outcomes"]
    job = ready.get(f"/v1/jobs/{outcome['job_id']}", headers=C).json()
    assert job["status"] == job["phase"] == "completed" and job["kind"] == "unlearn" and job["model"] == "m"
    assert job["shards_total"] >= 1 and job["shards_done"] == job["shards_total"]
    assert [s["shard"] for s in job["shards"]] == sorted(s["shard"] for s in job["shards"])
    assert all(s["phase"] == "done" and s["seconds"] > 0 for s in job["shards"])
    assert job["eta_s"] is None and job["finished_at"] is not None


def test_training_reports_epochs_samples_per_second_and_eta(ready, monkeypatch):
    """While a shard trains, each epoch's state reaches the job row (captured here from
    the heartbeat's writes, as the inline worker runs the shard to its end)."""
    from app.jobs import service

    seen = []
    real = service.renew_lease

    def spy(session, job_id, lease, progress=None, shard=None, state=None):
        if state is not None:
            seen.append(dict(state))
        return real(session, job_id, lease, progress, shard, state)

    monkeypatch.setattr(service, "renew_lease", spy)
    from app.jobs import heartbeat

    monkeypatch.setattr(heartbeat.Heartbeat, "report", _eager(heartbeat.Heartbeat.report))
    _delete(ready)
    training = [s for s in seen if s["phase"] == "training"]
    assert training, seen
    last = training[-1]
    assert last["epoch"] == last["epochs"] and last["samples_done"] == last["samples_total"] and last["eta_s"] == 0
    assert all(s["samples_per_s"] > 0 for s in training)
    assert seen[-1]["phase"] == "done"


def _eager(report):
    """Heartbeat.report, writing each state at once (the heartbeat thread writes every few s)."""
    def eager(self, msg, state=None):
        report(self, msg, state)
        if state is not None:
            self._renew()
    return eager


def test_a_client_sees_only_jobs_serving_its_requests(ready):
    job_id = _delete(ready)["outcomes"][0]["job_id"]
    assert ready.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
    r = ready.get(f"/v1/jobs/{job_id}", headers=C2)
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    assert ready.get("/v1/jobs/nope", headers=A).json()["code"] == "job_not_found"


def test_events_stream_the_job_and_end(ready):
    job_id = _delete(ready)["outcomes"][0]["job_id"]
    with ready.stream("GET", f"/v1/jobs/{job_id}/events", headers=C) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = [block for block in body.split("\n\n") if block.strip()]
    assert events[0].startswith("event: progress\ndata: ") and events[-1].startswith("event: end")
    doc = json.loads(events[0].split("data: ", 1)[1])
    assert doc["id"] == job_id and doc["status"] == "completed"
    assert json.loads(events[-1].split("data: ", 1)[1]) == {"status": "completed"}
    assert ready.get(f"/v1/jobs/{job_id}/events", headers=C2).status_code == 404
