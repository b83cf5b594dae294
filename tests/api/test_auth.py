"""API keys and roles: no key or an unknown key is 401, a client key is 403 on admin routes."""
from __future__ import annotations

from tests.service_helpers import C, TINY_MODEL


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
