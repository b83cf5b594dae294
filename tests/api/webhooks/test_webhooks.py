"""Webhooks: subscriptions, the URL guard, signed deliveries written with the change
they report, retries with back-off, giving up, and unsubscribing. Deliveries go over
real HTTP to a server in this process; the signatures are checked with the Standard
Webhooks reference library."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from app.tables import DeletionRequestRow, WebhookDeliveryRow, utcnow
from app.webhooks.sender import Sender
from tests.receiver import Receiver
from tests.service_helpers import A, C, TINY_MODEL, an_owner, make_app, run_worker_inline

ALL = ["request.completed", "request.failed", "request.overdue", "model.version_published", "model.version_revoked"]


@pytest.fixture
def hooked(tmp_path):
    """A trained tiny model on an app that may post to loopback (the test's receiver)."""
    app = make_app(tmp_path / "lethe", webhook_allow_private=True)
    with TestClient(app) as c:
        c.app_ = app
        assert c.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
        assert c.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
        run_worker_inline(app)
        yield c


def sender(client, **kw) -> Sender:
    s = client.app_.state.settings
    return Sender(client.app_.state.sessionmaker, allow_private=kw.pop("allow_private", s.webhook_allow_private),
                  timeout=5, **kw)


def subscribe(client, url: str, events=ALL) -> dict:
    r = client.post("/v1/webhooks", json={"url": url, "events": events}, headers=A)
    assert r.status_code == 201, r.text
    return r.json()


def delete_an_owner(client) -> str:
    r = client.post("/v1/deletion-requests", json={"owner_id": an_owner(client), "reason": "GDPR art. 17"},
                    headers=C)
    assert r.status_code == 202
    run_worker_inline(client.app_)
    return r.json()["id"]


def test_subscribing_answers_the_secret_once_and_is_audited(client):
    r = client.post("/v1/webhooks", json={"url": "https://93.184.215.14/hook", "events": ["request.completed"]},
                    headers=A)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")
    listed = client.get("/v1/webhooks", headers=A).json()
    assert listed == [{k: hook[k] for k in ("id", "url", "events", "created_at")}]
    assert "secret" not in client.get(f"/v1/webhooks/{hook['id']}", headers=A).json()
    events = client.get("/v1/audit", headers=A).json()["events"]
    assert [e["data"] for e in events if e["kind"] == "webhook.created"] == [
        {"webhook_id": hook["id"], "url": "https://93.184.215.14", "events": ["request.completed"]}]


@pytest.mark.parametrize("url, code", [
    ("ftp://93.184.215.14/x", "invalid_webhook_url"),
    ("file:///etc/passwd", "invalid_webhook_url"),
    ("http://user:pw@93.184.215.14/", "invalid_webhook_url"),
    ("http://no-such-host.invalid/", "invalid_webhook_url"),
    ("http://127.0.0.1:8000/", "webhook_url_not_allowed"),
    ("http://localhost/", "webhook_url_not_allowed"),
    ("http://10.1.2.3/", "webhook_url_not_allowed"),
    ("http://192.168.0.10/", "webhook_url_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", "webhook_url_not_allowed"),
    ("http://[::1]/", "webhook_url_not_allowed"),
    ("http://[::ffff:127.0.0.1]/", "webhook_url_not_allowed"),
    ("http://0.0.0.0/", "webhook_url_not_allowed"),
])
def test_urls_that_are_not_http_or_reach_a_private_address_are_refused(client, url, code):
    r = client.post("/v1/webhooks", json={"url": url, "events": ["request.completed"]}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == code, r.text
    assert client.get("/v1/webhooks", headers=A).json() == []


def test_bad_bodies_and_client_keys_are_refused(client):
    for body in ({"url": "https://93.184.215.14/", "events": ["request.deleted"]},
                 {"url": "https://93.184.215.14/", "events": []},
                 {"url": "https://93.184.215.14/", "events": ["request.completed"], "secret": "plain"}):
        r = client.post("/v1/webhooks", json=body, headers=A)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", body
    assert client.post("/v1/webhooks", json={"url": "https://93.184.215.14/", "events": ["request.completed"]},
                       headers=C).status_code == 403
    assert client.get("/v1/webhooks", headers=C).status_code == 403
    assert client.delete("/v1/webhooks/wh_nope", headers=A).json()["code"] == "webhook_not_found"


def test_a_deletion_posts_signed_events_that_name_no_owner_and_no_reason(hooked):
    with Receiver() as receiver:
        hook = subscribe(hooked, receiver.url)
        owner = an_owner(hooked)
        rid = delete_an_owner(hooked)
        assert sender(hooked).round() >= 3
    kinds = [json.loads(body)["type"] for _, body in receiver.received]
    # the new version, the one it replaced, and the request: each once
    assert sorted(kinds) == ["model.version_published", "model.version_revoked", "request.completed"]
    verifier = Webhook(hook["secret"])
    for headers, body in receiver.received:
        assert verifier.verify(body, headers)["type"] in kinds  # the reference library checks the signature
        assert headers["host"] == receiver.url.split("/")[2] and headers["webhook-id"].startswith("msg_")
        assert owner.encode() not in body and b"GDPR" not in body
    completed = next(json.loads(b)["data"] for _, b in receiver.received if b"request.completed" in b)
    request = hooked.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert completed["request_id"] == rid and completed["status"] == "completed"
    assert [(m["model"], m["version"]) for m in completed["models"]] == [("m", request["outcomes"][0]["version"])]
    deliveries = hooked.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=A).json()
    assert {d["status"] for d in deliveries} == {"delivered"} and len(deliveries) == 3
    assert all(d["attempts"] == 1 and d["attempt_log"][0]["status_code"] == 200 for d in deliveries)
    # A second tamper-free check: a changed body no longer verifies.
    headers, body = receiver.received[0]
    with pytest.raises(Exception):
        verifier.verify(body.replace(b"completed", b"failed") + b" ", headers)


def test_only_subscribed_events_are_written(hooked):
    with Receiver() as receiver:
        hook = subscribe(hooked, receiver.url, events=["request.failed"])
        delete_an_owner(hooked)
        assert sender(hooked).round() == 0
    assert receiver.received == [] and hooked.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=A).json() == []


def test_a_failing_receiver_is_retried_with_back_off_then_delivered(hooked):
    with Receiver(statuses=[500, 503]) as receiver:
        hook = subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        s = sender(hooked, retry_seconds=0.2)
        assert s.round() == 1
        (d,) = hooked.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=A).json()
        assert d["status"] == "pending" and d["attempts"] == 1 and d["attempt_log"][0]["error"] == "HTTP 500"
        assert s.round() == 0  # not due yet
        _due_now(hooked)
        s.round()
        _due_now(hooked)
        s.round()
    (d,) = hooked.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=A).json()
    assert d["status"] == "delivered" and d["attempts"] == 3
    assert [a["status_code"] for a in d["attempt_log"]] == [500, 503, 200]
    ids = {h["webhook-id"] for h, _ in receiver.received}
    assert ids == {d["id"]}  # the same id on every attempt: a receiver can drop repeats


def test_the_wait_doubles_and_a_day_later_the_delivery_fails_for_good(hooked):
    with Receiver(statuses=[500] * 10) as receiver:
        hook = subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        s = sender(hooked, retry_seconds=60)
        waits = []
        for _ in range(3):
            s.round()
            waits.append(_row(hooked).next_attempt_at - utcnow())
            _due_now(hooked)
        assert [round(w.total_seconds() / 60) for w in waits] == [1, 2, 4]
        _age(hooked, timedelta(hours=24))
        s.round()
    d = _row(hooked)
    assert d.status == "failed" and d.attempts == 4 and d.next_attempt_at is None and len(receiver.received) == 4
    assert hooked.get(f"/v1/webhooks/{hook['id']}/deliveries?status=failed", headers=A).json()[0]["id"] == d.id


def test_a_claimed_delivery_whose_sender_died_is_sent_after_its_lease(hooked):
    with Receiver() as receiver:
        subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        s = sender(hooked)
        assert len(s._claim()) == 1  # claimed, then the process "dies" before posting
        assert s.round() == 0
        _due_now(hooked)  # the lease ran out
        assert s.round() == 1
    assert len(receiver.received) == 1 and _row(hooked).status == "delivered"


def test_the_sender_checks_the_address_again_when_it_posts(hooked):
    """Subscribed while private addresses were allowed; a sender that does not allow them
    posts nothing and logs why on the delivery."""
    with Receiver() as receiver:
        subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        sender(hooked, allow_private=False).round()
    d = _row(hooked)
    assert receiver.received == [] and d.status == "pending" and "non-public address" in d.attempt_log[0]["error"]


def test_unsubscribing_cancels_pending_deliveries_and_keeps_the_history(hooked):
    with Receiver() as receiver:
        hook = subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        assert hooked.delete(f"/v1/webhooks/{hook['id']}", headers=A).status_code == 204
        assert sender(hooked).round() == 0
    assert receiver.received == [] and _row(hooked).status == "cancelled"
    assert hooked.get("/v1/webhooks", headers=A).json() == []
    assert hooked.get(f"/v1/webhooks/{hook['id']}", headers=A).status_code == 404
    kinds = [e["kind"] for e in hooked.get("/v1/audit", headers=A).json()["events"]]
    assert "webhook.removed" in kinds


def test_an_overdue_request_is_reported_once(hooked):
    from app.db import session_scope
    from app.deletions.service import mark_overdue

    with Receiver() as receiver:
        subscribe(hooked, receiver.url, events=["request.overdue"])
        r = hooked.post("/v1/deletion-requests", json={"owner_id": an_owner(hooked)}, headers=C)
        rid = r.json()["id"]
        factory = hooked.app_.state.sessionmaker
        with session_scope(factory) as session:
            session.get(DeletionRequestRow, rid).due_at = utcnow() - timedelta(minutes=1)
        for _ in range(2):
            with session_scope(factory) as session:
                mark_overdue(session, actor="test")
        sender(hooked).round()
    (body,) = [json.loads(b) for _, b in receiver.received]
    assert body["type"] == "request.overdue" and body["data"]["request_id"] == rid
    events = hooked.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]
    assert [e["kind"] for e in events].count("request.overdue") == 1


def _row(client) -> WebhookDeliveryRow:
    with client.app_.state.sessionmaker() as session:
        (row,) = session.query(WebhookDeliveryRow).all()
        return row


def _due_now(client) -> None:
    from app.db import session_scope

    with session_scope(client.app_.state.sessionmaker) as session:
        for row in session.query(WebhookDeliveryRow).filter(WebhookDeliveryRow.status == "pending"):
            row.next_attempt_at = utcnow() - timedelta(seconds=1)


def _age(client, by: timedelta) -> None:
    from app.db import session_scope

    with session_scope(client.app_.state.sessionmaker) as session:
        for row in session.query(WebhookDeliveryRow):
            row.created_at -= by


def test_secrets_are_24_to_64_bytes_of_base64(client):
    import base64

    for secret in ("whsec_" + "A" * 33, "whsec_" + base64.b64encode(b"x" * 23).decode(),
                   "whsec_" + base64.b64encode(b"x" * 65).decode(), "plain"):
        r = client.post("/v1/webhooks", json={"url": "https://93.184.215.14/", "events": ["request.completed"],
                                              "secret": secret}, headers=A)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", secret
    longest = "whsec_" + base64.b64encode(b"y" * 64).decode()
    r = client.post("/v1/webhooks", json={"url": "https://93.184.215.14/", "events": ["request.completed"],
                                          "secret": longest}, headers=A)
    assert r.status_code == 201 and r.json()["secret"] == longest


def test_an_unexpected_error_while_posting_is_logged_on_the_delivery_and_retried(hooked, monkeypatch):
    """Not only HTTP errors: whatever goes wrong in a post counts as a failed attempt, so
    the delivery keeps its back-off and its give-up time."""
    from app.webhooks import sender as sender_module

    with Receiver() as receiver:
        subscribe(hooked, receiver.url, events=["request.completed"])
        delete_an_owner(hooked)
        monkeypatch.setattr(sender_module, "sign", lambda *a: (_ for _ in ()).throw(UnicodeError("bad name")))
        assert sender(hooked).round() == 1
    d = _row(hooked)
    assert receiver.received == [] and d.status == "pending" and d.attempts == 1
    assert d.attempt_log[0]["error"] == "UnicodeError: bad name" and d.next_attempt_at > utcnow()


def test_a_failed_request_is_reported_without_its_failure_text(hooked, monkeypatch):
    from app.jobs import flow

    with Receiver() as receiver:
        subscribe(hooked, receiver.url, events=["request.failed"])
        change = hooked.app_.state.settings.model_copy(update={"max_attempts": 1})
        hooked.app_.state.settings = change
        monkeypatch.setattr(flow.JobFlow, "_plan", lambda self, claim: (_ for _ in ()).throw(
            RuntimeError("owner-secret-name broke it")))
        owner = an_owner(hooked)
        r = hooked.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C)
        run_worker_inline(hooked.app_)
        assert hooked.get(f"/v1/deletion-requests/{r.json()['id']}", headers=C).json()["status"] == "failed"
        sender(hooked).round()
    (headers, body) = receiver.received[0]
    event = json.loads(body)
    assert event["type"] == "request.failed" and event["data"]["request_id"] == r.json()["id"]
    assert b"owner-secret-name" not in body and owner.encode() not in body and "failure_reason" not in event["data"]
