"""The audit log through the API: events in order, pagination, tamper detection, no personal data."""
from __future__ import annotations

from sqlalchemy import select, text

from app.tables import AuditEventRow
from tests.service_helpers import A, C, an_owner, run_worker_inline


def test_audit_trail_holds_the_requests_events_in_order(ready):
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    events = ready.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]
    assert [e["kind"] for e in events] == [
        "request.accepted", "request.running", "request.model_unlearned", "request.completed",
        "request.evidence_destroyed"]
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
