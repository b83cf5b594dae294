"""Health and readiness probes, and the OpenAPI document listing the v1 routes."""
from __future__ import annotations


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_lists_the_v1_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/datasets", "/v1/models", "/v1/deletion-requests", "/v1/audit", "/v1/audit/verify",
              "/v1/owners/{owner_id}", "/v1/models/{name}/versions/{number}/predict"):
        assert p in paths
