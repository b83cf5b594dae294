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


def _cut_tail(client, n: int) -> int:
    with client.app_.state.sessionmaker() as s:
        last = s.scalar(select(AuditEventRow.seq).order_by(AuditEventRow.seq.desc()).limit(1))
        s.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": last - n})
        s.commit()
    return last


def test_a_tail_cut_from_the_chain_is_caught_by_its_signed_anchor(ready, capsys):
    from app.cli import main as lethe

    assert _cut_tail(ready, 0) > 3
    with ready.app_.state.sessionmaker() as s:  # before an anchor, a cut tail still links up
        s.execute(text("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)"))
        s.commit()
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True
    ready.app_.state.relay.reconcile()  # the API anchors the head each round
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is True and report["anchored_seq"] == report["events"]
    last = _cut_tail(ready, 3)
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and report["truncated"] is True and report["anchored_seq"] == last
    assert report["first_bad_seq"] == last - 2 and "truncated" in report["problem"]
    data_dir = str(ready.app_.state.settings.data_dir)
    assert lethe(["--data-dir", data_dir, "audit", "verify"]) == 1
    assert "truncated" in capsys.readouterr().out


def test_a_chain_rewritten_past_its_anchor_is_caught(ready):
    ready.app_.state.relay.reconcile()
    _cut_tail(ready, 2)
    for _ in range(3):  # new events take the cut ones' places, and link up
        ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and report["truncated"] is False and "rewritten" in report["problem"]
    anchored = report["anchored_seq"]
    ready.app_.state.relay.reconcile()  # the rewritten chain is not signed again
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and report["anchored_seq"] == anchored and "rewritten" in report["problem"]


def test_an_anchor_that_was_tampered_with_does_not_count(ready):
    ready.app_.state.relay.reconcile()
    store = ready.app_.state.engine.store
    (name,) = store.backend.list("audit/anchors")
    path = ready.app_.state.settings.data_dir / "models_store" / "audit" / "anchors" / name
    header, payload, signature = path.read_text().split(".")
    path.write_text(".".join([header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")]))
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and "does not verify" in report["problem"]


def test_an_audit_cursor_past_the_seq_column_is_422(ready):
    r = ready.get(f"/v1/audit?cursor={2**31}", headers=A)  # PostgreSQL's integer ends at 2**31 - 1
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def _store_path(client, *parts):
    return client.app_.state.settings.data_dir.joinpath("models_store", "audit", *parts)


def test_each_anchor_names_the_one_before_it(ready):
    import jwt

    ready.app_.state.relay.reconcile()
    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    ready.app_.state.relay.reconcile()
    first, second = sorted(_store_path(ready, "anchors").iterdir())
    claims = [jwt.decode(p.read_text(), options={"verify_signature": False}) for p in (first, second)]
    assert claims[0]["prev"] is None
    assert claims[1]["prev"] == {"seq": claims[0]["seq"], "head_hash": claims[0]["head_hash"]}


def test_a_garbage_anchor_file_is_reported_and_does_not_stop_anchoring(ready):
    ready.app_.state.relay.reconcile()
    _store_path(ready, "anchors", f"{10**12:020d}.jws").write_text("not a token")
    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    ready.app_.state.relay.reconcile()
    with ready.app_.state.sessionmaker() as s:
        head = s.scalar(select(AuditEventRow.seq).order_by(AuditEventRow.seq.desc()).limit(1))
    assert _store_path(ready, "anchors", f"{head:020d}.jws").exists()  # anchored past the garbage
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and "is not valid" in report["problem"] and report["anchored_seq"] == head


def test_removing_every_anchor_is_reported_once_the_chain_is_older_than_the_grace(ready):
    import shutil
    from datetime import timedelta

    from app.audit import anchors

    ready.app_.state.relay.reconcile()
    shutil.rmtree(_store_path(ready, "anchors"))
    _cut_tail(ready, 3)
    with ready.app_.state.sessionmaker() as s:
        report = anchors.verify(s, ready.app_.state.engine.store, ready.app_.state.signing_key,
                                unanchored_grace=timedelta(0))
    assert report.ok is False and "no audit anchor" in report.problem
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True  # a young chain may not be anchored yet


def test_an_anchor_signed_by_a_key_added_to_the_database_does_not_verify(ready):
    """Whoever can write the database could add a key to signing_keys; anchors are
    checked against the keys kept beside them in the store, and the service's own."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from jwt.algorithms import OKPAlgorithm

    from app.tables import SigningKeyRow

    ready.app_.state.relay.reconcile()
    forged = Ed25519PrivateKey.generate()
    jwk = {**OKPAlgorithm.to_jwk(forged.public_key(), as_dict=True), "kid": "forged", "alg": "EdDSA", "use": "sig"}
    with ready.app_.state.sessionmaker() as s:
        s.add(SigningKeyRow(kid="forged", public_jwk=jwk))
        s.commit()
    token = jwt.encode({"typ": "audit-anchor", "seq": 10**9, "head_hash": "0" * 64, "at": "2026-01-01T00:00:00",
                        "prev": None}, forged, algorithm="EdDSA", headers={"kid": "forged"})
    _store_path(ready, "anchors", f"{10**9:020d}.jws").write_text(token)
    report = ready.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is False and "unknown key 'forged'" in report["problem"]
