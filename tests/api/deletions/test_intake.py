"""Accepting deletion requests: bad input is refused with a code, callers see only their
own requests, and one group commit accepts many submissions and isolates the bad ones."""
from __future__ import annotations

from sqlalchemy import select

from app.tables import AuditEventRow, OutboxRow
from tests.service_helpers import A, C, C2, an_owner


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


def test_client_cannot_read_another_clients_request(ready):
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    rid = r.json()["id"]
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C2).status_code == 404
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).status_code == 200
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=A).status_code == 200


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
