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


def test_while_the_database_is_down_the_api_answers_503_with_retry_after(ready):
    """Reads and deletion intake alike: 503 ``database_unavailable``, never 500."""
    from sqlalchemy.orm import sessionmaker

    from app.db import make_db_engine
    from tests.service_helpers import A, C, an_owner

    owner = an_owner(ready)
    down = sessionmaker(make_db_engine("postgresql://lethe@127.0.0.1:1/lethe"), expire_on_commit=False)
    ready.app_.state.sessionmaker = ready.app_.state.intake.factory = down
    for r in (ready.get("/v1/models", headers=C), ready.get("/v1/audit", headers=A),
              ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C)):
        assert r.status_code == 503 and r.json()["code"] == "database_unavailable", r.text
        assert int(r.headers["Retry-After"]) > 0
