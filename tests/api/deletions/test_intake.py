"""Accepting deletion requests: bad input is refused with a code, callers see only their
own requests, and one group commit accepts many submissions and isolates the bad ones."""
from __future__ import annotations

import json

import pytest
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


def test_a_group_that_fails_in_the_database_is_accepted_one_by_one(ready, monkeypatch):
    """Whatever makes a group commit fail (here: the database refusing one request's row),
    the others in the group are accepted and only that request gets the error."""
    from app.callers import Caller
    from app.deletions import intake, service
    from app.deletions.schemas import DeletionCreate
    from app.deletions.service import Accepted, Submission

    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=3", headers=A).json()["owners"]]
    real = service.accept_many

    def refuses_poison(*, session, engine, subs, deadline):
        results = real(session=session, engine=engine, subs=subs, deadline=deadline)
        if any(s.body.reason == "poison" for s in subs):
            session.flush()
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return results

    monkeypatch.setattr(intake, "accept_many", refuses_poison)
    me, other = Caller("caller-a", "client"), Caller("caller-b", "client")
    subs = [Submission(other, DeletionCreate(owner_id=owners[0])),
            Submission(me, DeletionCreate(owner_id=owners[1], reason="poison")),
            Submission(other, DeletionCreate(owner_id=owners[2]))]
    results = ready.app_.state.intake.write(subs)
    assert isinstance(results[0], Accepted) and isinstance(results[2], Accepted)
    assert isinstance(results[1], ValueError)
    for r in (results[0], results[2]):
        assert ready.get(f"/v1/deletion-requests/{r.request.id}", headers=A).status_code == 200
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_a_group_cut_off_by_a_transient_fault_is_not_written_again(ready, monkeypatch):
    """A connection lost during the group's COMMIT may have committed it: writing its
    requests again one by one could accept one twice. The whole group gets the fault."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from app.callers import Caller
    from app.deletions import intake
    from app.deletions.schemas import DeletionCreate
    from app.deletions.service import Submission

    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=2", headers=A).json()["owners"]]
    calls = []

    def connection_lost(*, session, engine, subs, deadline):
        calls.append(len(subs))
        raise OperationalError("COMMIT", {}, psycopg.OperationalError("server closed the connection unexpectedly"))

    monkeypatch.setattr(intake, "accept_many", connection_lost)
    me = Caller("caller-a", "client")
    with pytest.raises(OperationalError):
        ready.app_.state.intake.write([Submission(me, DeletionCreate(owner_id=o)) for o in owners])
    assert calls == [2]  # tried once, as a group


BAD_TEXT = ["a\u0000b", "\ud800"]


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_text_the_database_cannot_store_is_422_in_every_body_field(ready, bad):
    owner = an_owner(ready)
    for path, body in [
        ("/v1/deletion-requests", {"owner_id": bad}),
        ("/v1/deletion-requests", {"owner_id": owner, "reason": f"hi{bad}there"}),
        ("/v1/deletion-requests", {"owner_id": owner, "models": ["m", bad]}),
        ("/v1/datasets", {"name": f"d{bad}", "source": "digits"}),
        ("/v1/models", {"name": "m9", "dataset": "digits", "architecture": "mlp", "training": {bad: 1}}),
        ("/v1/models/m/aliases/prod", {"version": 1, "note": bad}),
    ]:
        method = ready.put if "aliases" in path else ready.post
        raw = json.dumps(body)  # "\\u0000" / "\\ud800" escapes: valid JSON, unstorable text
        r = method(path, content=raw.encode(), headers={**A, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (path, r.text)


@pytest.mark.parametrize("url", ["/v1/models/x%00y", "/v1/owners/a%00b", "/v1/deletion-requests/r%00",
                                 "/v1/models/m/versions/1%00", "/v1/deletion-requests?owner_id=a%00b",
                                 "/v1/datasets/digits/owners?after=a%00"])
def test_a_nul_in_a_path_or_query_is_422_not_500(ready, url):
    r = ready.get(url, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
