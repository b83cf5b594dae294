"""The HTTP API in-process (TestClient, SQLite), with the worker's tasks run inline."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from sqlalchemy import select, text

from app.migrate import upgrade
from app.tables import AuditEventRow, OutboxRow
from tests.service_helpers import A, C, C2, TINY_MODEL, make_settings, run_worker_inline

warnings.filterwarnings("ignore", message=".*httpx.*")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture
def client(tmp_path):
    settings = make_settings(tmp_path / "lethe")
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    from app.main import create_app

    app = create_app(settings, run_relay=False)
    with TestClient(app) as c:
        c.app_ = app
        yield c


@pytest.fixture
def ready(client):
    """digits imported and a tiny SISA model trained (version 1)."""
    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    assert client.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
    run_worker_inline(client.app_)
    assert client.get("/v1/models/m", headers=A).json()["status"] == "ready"
    return client


def an_owner(client) -> str:
    return client.get("/v1/datasets/digits/owners?limit=1", headers=A).json()["owners"][0]["owner_id"]


# -- auth ---------------------------------------------------------------------
def test_missing_key_is_401_with_code(client):
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_unknown_key_is_401(client):
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_client_key_cannot_read_audit_log(client):
    r = client.get("/v1/audit", headers=C)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert client.get("/v1/audit/verify", headers=C).status_code == 403


def test_client_key_cannot_train_models_or_import_data(client):
    assert client.post("/v1/datasets", json={"name": "d", "source": "digits"}, headers=C).status_code == 403
    assert client.post("/v1/models", json=TINY_MODEL, headers=C).status_code == 403


# -- bad input ----------------------------------------------------------------
def test_malformed_body_is_422_with_code(client):
    r = client.post("/v1/deletion-requests", content=b"{not json", headers={**C, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = client.post("/v1/deletion-requests", json={"owner_id": ""}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_unknown_owner_is_404_owner_not_found(ready):
    r = ready.post("/v1/deletion-requests", json={"owner_id": "nobody"}, headers=C)
    assert r.status_code == 404 and r.json()["code"] == "owner_not_found"


def test_unknown_model_in_request_is_404(ready):
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "models": ["nope"]}, headers=C)
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"


def test_unsupported_method_is_422(ready):
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "method": "magic"}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_oversized_upload_is_413(tmp_path):
    settings = make_settings(tmp_path / "small", max_upload_bytes=1000)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    from app.main import create_app

    with TestClient(create_app(settings, run_relay=False)) as c:
        r = c.post("/v1/datasets", files={"file": ("x.npz", b"\0" * 5000)}, data={"name": "big"}, headers=A)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_bad_npz_upload_is_422_not_500(client):
    r = client.post("/v1/datasets", files={"file": ("x.npz", b"not a zip")}, data={"name": "bad"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_dataset"


def test_npz_upload_with_owner_ids_imports(client):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((40, 4)).astype(np.float32), y=rng.integers(0, 2, 40),
             owner_id=np.array([f"u{i % 8}" for i in range(40)]))
    r = client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, data={"name": "mine"}, headers=A)
    assert r.status_code == 201, r.json()
    assert r.json()["n_owners"] == 8 and r.json()["n_samples"] == 40


def test_duplicate_dataset_is_409(client):
    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    r = client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    assert r.status_code == 409 and r.json()["code"] == "dataset_exists"


def test_too_many_shards_for_the_owners_is_422(client):
    client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    body = {**TINY_MODEL, "strategy": {"kind": "sisa", "shards": 50, "slices": 10}}
    r = client.post("/v1/models", json=body, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_model"


def test_predict_rejects_wrong_shape_and_too_many_rows(ready):
    r = ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[1, 2, 3]]}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_inputs"
    r = ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[0] * 64] * 2000}, headers=C)
    assert r.status_code == 413 and r.json()["code"] == "too_many_inputs"
    r = ready.post("/v1/models/m/versions/x/predict", json={"inputs": [[0] * 64]}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_version"
    r = ready.post("/v1/models/m/versions/9/predict", json={"inputs": [[0] * 64]}, headers=C)
    assert r.status_code == 404 and r.json()["code"] == "version_not_found"


# -- idempotency ----------------------------------------------------------------
def test_same_idempotency_key_returns_the_same_request(ready):
    owner = an_owner(ready)
    h = {**C, "Idempotency-Key": "k-1"}
    first = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=h)
    again = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ready.get(f"/v1/deletion-requests?owner_id={owner}", headers=C).json()) == 1


def test_same_idempotency_key_with_another_body_is_422(ready):
    owner = an_owner(ready)
    h = {**C, "Idempotency-Key": "k-2"}
    ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=h)
    r = ready.post("/v1/deletion-requests", json={"owner_id": owner, "reason": "other"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


def test_idempotency_keys_are_per_caller(ready):
    owner = an_owner(ready)
    a = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers={**C, "Idempotency-Key": "same"})
    b = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers={**C2, "Idempotency-Key": "same"})
    assert a.json()["id"] != b.json()["id"]


def test_client_cannot_read_another_clients_request(ready):
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    rid = r.json()["id"]
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C2).status_code == 404
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).status_code == 200
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=A).status_code == 200


# -- accepting writes request, audit event and outbox row together ----------------
def test_accepting_a_request_writes_audit_and_outbox_in_one_transaction(ready):
    factory = ready.app_.state.sessionmaker
    with factory() as s:
        before = s.scalar(select(OutboxRow.id).order_by(OutboxRow.id.desc()).limit(1))
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    rid = r.json()["id"]
    with factory() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.id > before)).all()
        events = s.scalars(select(AuditEventRow).where(AuditEventRow.request_id == rid)).all()
    assert [(o.task, o.payload) for o in rows] == [("lethe.advance", {"model": "m"})]
    assert [e.kind for e in events] == ["request.accepted"]


def test_broker_down_keeps_outbox_rows_for_later(ready):
    from app.outbox import relay_batch

    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)

    def down(task, payload):
        raise ConnectionError("broker down")

    assert relay_batch(ready.app_.state.sessionmaker, down) == 0
    with ready.app_.state.sessionmaker() as s:
        row = s.scalars(select(OutboxRow).where(OutboxRow.sent_at.is_(None))).one()
    assert "broker down" in row.last_error and row.attempts == 1
    assert run_worker_inline(ready.app_) >= 1  # delivered once the broker is back


# -- the whole path, in-process ------------------------------------------------------
def test_deletion_completes_and_new_version_excludes_the_owner(ready):
    owner = an_owner(ready)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed", req
    (outcome,) = req["outcomes"]
    assert outcome["version"] == 2 and outcome["method"] == "exact"
    version = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert version["parent"] == 1 and rid in version["requests"]
    lineage = ready.get(f"/v1/owners/{owner}", headers=A).json()
    assert lineage["datasets"][0]["remaining_samples"] == 0
    assert lineage["models"][0]["versions_trained_on_owner"] == [1]
    assert lineage["models"][0]["latest_excludes_owner"] is True


def test_requests_for_one_model_are_coalesced_into_one_pass(ready):
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=3", headers=A).json()["owners"]]
    ids = [ready.post("/v1/deletion-requests", json={"owner_id": o}, headers=C).json()["id"] for o in owners]
    run_worker_inline(ready.app_)
    versions = {ready.get(f"/v1/deletion-requests/{i}", headers=C).json()["outcomes"][0]["version"] for i in ids}
    assert versions == {2}
    assert sorted(ready.get("/v1/models/m/versions/2", headers=C).json()["requests"]) == sorted(ids)


def test_audit_trail_holds_the_requests_events_in_order(ready):
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    events = ready.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]
    assert [e["kind"] for e in events] == [
        "request.accepted", "request.running", "request.model_unlearned", "request.completed"]
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_audit_pagination_walks_every_event_once(ready):
    seen, cursor = [], 0
    while True:
        page = ready.get(f"/v1/audit?limit=2&cursor={cursor}", headers=A).json()
        seen += [e["seq"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == list(range(1, len(seen) + 1)) and len(seen) > 2


def test_editing_an_audit_row_breaks_verification(ready):
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True
    with ready.app_.state.sessionmaker() as s:
        s.execute(text("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2"))
        s.commit()
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and report["first_bad_seq"] == 2


def test_deleting_an_audit_row_breaks_verification(ready):
    with ready.app_.state.sessionmaker() as s:
        s.execute(text("DELETE FROM audit_events WHERE seq = 2"))
        s.commit()
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and report["first_bad_seq"] == 3


def test_audit_events_hold_ids_and_digests_not_reasons(ready):
    owner = an_owner(ready)
    secret = "my home address is 1 Main St"
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner, "reason": secret}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    with ready.app_.state.sessionmaker() as s:
        blobs = " ".join(e.data for e in s.scalars(select(AuditEventRow)))
    assert secret not in blobs and rid in blobs


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


def test_version_detail_artifact_and_predict(ready):
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["version"] == 1 and len(v["constituents"]) == 2 and len(v["manifest_digest"]) == 64
    art = ready.get("/v1/models/m/versions/1/artifact", headers=C)
    assert art.status_code == 200 and art.headers["content-type"] == "application/zip"
    assert art.headers["X-Lethe-Record-Sha256"] == v["record_sha256"]
    x = np.zeros((3, 64)).tolist()
    p = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x}, headers=C).json()
    assert len(p["probabilities"]) == 3 and abs(sum(p["probabilities"][0]) - 1) < 1e-3


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_lists_the_v1_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/datasets", "/v1/models", "/v1/deletion-requests", "/v1/audit", "/v1/audit/verify",
              "/v1/owners/{owner_id}", "/v1/models/{name}/versions/{number}/predict"):
        assert p in paths


def test_one_group_commit_accepts_many_and_isolates_bad_requests(ready):
    from app.deletions.schemas import DeletionCreate
    from app.deletions.service import Accepted, Submission
    from app.callers import Caller
    from app.errors import ApiError

    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=3", headers=A).json()["owners"]]
    me = Caller("caller-a", "client")
    subs = [
        Submission(me, DeletionCreate(owner_id=owners[0]), "k1"),
        Submission(me, DeletionCreate(owner_id="nobody")),
        Submission(me, DeletionCreate(owner_id=owners[0]), "k1"),  # same key, same body: the same request
        Submission(me, DeletionCreate(owner_id=owners[1]), "k1"),  # same key, other body: refused
        Submission(me, DeletionCreate(owner_id=owners[2])),
    ]
    factory = ready.app_.state.sessionmaker
    with factory() as s:
        outbox_before = s.scalar(select(OutboxRow.id).order_by(OutboxRow.id.desc()).limit(1))
    results = ready.app_.state.intake.write(subs)
    assert isinstance(results[0], Accepted) and not results[0].replayed
    assert isinstance(results[1], ApiError) and results[1].code == "owner_not_found"
    assert results[2].replayed and results[2].request.id == results[0].request.id
    assert isinstance(results[3], ApiError) and results[3].code == "idempotency_key_reused"
    assert isinstance(results[4], Accepted) and not results[4].replayed
    with factory() as s:
        new_outbox = s.scalars(select(OutboxRow).where(OutboxRow.id > outbox_before)).all()
        accepted = s.scalars(select(AuditEventRow).where(AuditEventRow.kind == "request.accepted")).all()
    assert len(new_outbox) == 1  # one message per model for the whole batch
    assert {e.request_id for e in accepted} == {results[0].request.id, results[4].request.id}
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


def test_out_of_range_audit_cursor_and_odd_version_numbers_are_422(ready):
    r = ready.get(f"/v1/audit?cursor={2**63}", headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    for number in ("²", "0", "-1", "v1"):
        r = ready.get(f"/v1/models/m/versions/{number}", headers=C)
        assert r.status_code == 422 and r.json()["code"] == "invalid_version", number
