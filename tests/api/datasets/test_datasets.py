"""Importing data sets through the API: uploads (size limit, bad and good npz) and duplicate names."""
from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient

from tests.service_helpers import A, make_app


def test_oversized_upload_is_413(tmp_path):
    with TestClient(make_app(tmp_path / "small", max_upload_bytes=1000)) as c:
        r = c.post("/v1/datasets", files={"file": ("x.npz", b"\0" * 5000)}, data={"name": "big"}, headers=A)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_bad_npz_upload_is_422_not_500(client):
    r = client.post("/v1/datasets", files={"file": ("x.npz", b"not a zip")}, data={"name": "bad"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_dataset"


def test_npz_upload_with_owner_ids_imports(client):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((40, 4)).astype(np.float32), y=rng.integers(0, 2, 40),
             owner_id=np.array([f"u{i % 8}" for i in range(40)]))
    r = client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, data={"name": "mine"}, headers=A)
    assert r.status_code == 201, r.json()
    assert r.json()["n_owners"] == 8 and r.json()["n_samples"] == 40


def test_duplicate_dataset_is_409(client):
    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    r = client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    assert r.status_code == 409 and r.json()["code"] == "dataset_exists"
