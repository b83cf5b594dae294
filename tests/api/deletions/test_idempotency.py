"""Idempotency-Key on deletion requests: a replay returns the same request, another body is refused, keys are per caller."""
from __future__ import annotations

from tests.service_helpers import C, C2, an_owner


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
