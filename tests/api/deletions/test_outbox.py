"""Accepting a request writes the request, its audit event and an outbox row together; the outbox survives a broker outage."""
from __future__ import annotations

from sqlalchemy import select

from app.tables import AuditEventRow, OutboxRow
from tests.service_helpers import C, an_owner, run_worker_inline


def test_accepting_a_request_writes_audit_and_outbox_in_one_transaction(ready):
    factory = ready.app_.state.sessionmaker
    with factory() as s:
        before = s.scalar(select(OutboxRow.id).order_by(OutboxRow.id.desc()).limit(1))
    r = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers={**C, "X-Request-ID": "t-1"})
    rid = r.json()["id"]
    with factory() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.id > before)).all()
        events = s.scalars(select(AuditEventRow).where(AuditEventRow.request_id == rid)).all()
    # the message carries the accepting request's id for the worker's logs, nothing personal
    assert [(o.task, o.payload) for o in rows] == [("lethe.advance", {"model": "m", "trace": ["t-1"]})]
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
