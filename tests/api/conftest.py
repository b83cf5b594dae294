"""Fixtures for the API tests: the HTTP API in-process (TestClient, SQLite), with the
worker's tasks run inline."""
from __future__ import annotations

import warnings

import pytest

from tests.service_helpers import A, TINY_MODEL, make_app, run_worker_inline

warnings.filterwarnings("ignore", message=".*httpx.*")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture
def client(tmp_path):
    app = make_app(tmp_path / "lethe")
    with TestClient(app) as c:
        c.app_ = app
        yield c


@pytest.fixture
def ready(client):
    """digits imported and a tiny SISA model trained (version 1)."""
    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    assert client.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
    run_worker_inline(client.app_)
    assert client.get("/v1/models/m", headers=A).json()["status"] == "ready"
    return client
