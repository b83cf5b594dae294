"""Models through the API: training requests, versions (detail, odd numbers), artifact download and predict."""
from __future__ import annotations

import numpy as np

from tests.service_helpers import A, C, TINY_MODEL


def test_too_many_shards_for_the_owners_is_422(client):
    client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    body = {**TINY_MODEL, "strategy": {"kind": "sisa", "shards": 50, "slices": 10}}
    r = client.post("/v1/models", json=body, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_model"


def test_predict_rejects_wrong_shape_and_too_many_rows(ready):
    r = ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[1, 2, 3]]}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_inputs"
    r = ready.post("/v1/models/m/versions/latest/predict", json={"inputs": [[0] * 64] * 2000}, headers=C)
    assert r.status_code == 413 and r.json()["code"] == "too_many_inputs"
    r = ready.post("/v1/models/m/versions/x/predict", json={"inputs": [[0] * 64]}, headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_version"
    r = ready.post("/v1/models/m/versions/9/predict", json={"inputs": [[0] * 64]}, headers=C)
    assert r.status_code == 404 and r.json()["code"] == "version_not_found"


def test_version_detail_artifact_and_predict(ready):
    v = ready.get("/v1/models/m/versions/latest", headers=C).json()
    assert v["version"] == 1 and len(v["constituents"]) == 2 and len(v["manifest_digest"]) == 64
    art = ready.get("/v1/models/m/versions/1/artifact", headers=C)
    assert art.status_code == 200 and art.headers["content-type"] == "application/zip"
    assert art.headers["X-Lethe-Record-Sha256"] == v["record_sha256"]
    x = np.zeros((3, 64)).tolist()
    p = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x}, headers=C).json()
    assert len(p["probabilities"]) == 3 and abs(sum(p["probabilities"][0]) - 1) < 1e-3


def test_out_of_range_audit_cursor_and_odd_version_numbers_are_422(ready):
    r = ready.get(f"/v1/audit?cursor={2**63}", headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    for number in ("²", "0", "-1", "v1"):
        r = ready.get(f"/v1/models/m/versions/{number}", headers=C)
        assert r.status_code == 422 and r.json()["code"] == "invalid_version", number
