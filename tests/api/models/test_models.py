"""Models through the API: training requests, versions (detail, odd numbers), artifact download and predict."""
from __future__ import annotations

import numpy as np

from tests.service_helpers import A, C, TINY_MODEL, change_settings, run_worker_inline


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


def _npy(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_predict_takes_an_npy_body_and_answers_as_for_json(ready):
    x = np.random.default_rng(1).uniform(0, 16, (3, 64)).round()
    as_json = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x.tolist()}, headers=C).json()
    r = ready.post("/v1/models/m/versions/1/predict", content=_npy(x.astype(np.float32)),
                   headers={**C, "Content-Type": "application/x-npy"})
    assert r.status_code == 200 and r.json() == as_json
    r = ready.post("/v1/models/m/versions/1/predict", content=_npy(np.array([object()], dtype=object)),
                   headers={**C, "Content-Type": "application/x-npy"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_inputs"  # pickles are refused


def test_a_predict_body_past_what_its_rows_can_take_is_413_declared_or_chunked(ready):
    from app.models.service import predict_body_limit

    limit = predict_body_limit(width=64, max_rows=1024, binary=False, max_bytes=64 * 1024 * 1024)
    big = b'{"inputs": [' + b"0," * (limit // 2 + 10) + b"0]}"
    r = ready.post("/v1/models/m/versions/1/predict", content=big, headers={**C, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    sent = []

    def chunks():  # no Content-Length: the server must stop reading once past the limit
        for i in range(0, len(big), 65536):
            sent.append(i)
            yield big[i:i + 65536]

    r = ready.post("/v1/models/m/versions/1/predict", content=chunks(), headers={**C, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def _npy_header(shape: tuple, descr: str = "<f4", fortran_order: bool = False) -> bytes:
    """An .npy header (format 1.0) declaring ``shape``, with no data after it."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buf.getvalue()


def test_an_npy_header_is_checked_before_anything_is_allocated(ready):
    """A huge declared shape is refused from the header (not a MemoryError), and so is a
    body whose bytes do not match what its header declares, or that holds no numbers."""
    npy = {**C, "Content-Type": "application/x-npy"}

    def post(body: bytes):
        return ready.post("/v1/models/m/versions/1/predict", content=body, headers=npy)

    r = post(_npy_header((10**12, 64)) + b"\0" * 256)
    assert r.status_code == 413 and r.json()["code"] == "too_many_inputs", r.text
    for shape in ((10**12, 784), (2, 10**12), (1, 8, 10**11), (64,), (2, -8, -8), (0, -8, -8)):
        r = post(_npy_header(shape) + b"\0" * 256)
        assert r.status_code == 422 and r.json()["code"] == "invalid_inputs", (shape, r.text)
    row = np.zeros((1, 64), np.float32).tobytes()
    for body in (_npy_header((10, 64)) + row, _npy(np.zeros((2, 64), np.float32)) + b"\0" * 8,
                 _npy(np.full((1, 64), "1", dtype="<U1")), _npy(np.zeros((1, 64), np.complex64)),
                 _npy(np.zeros((1, 64), np.longdouble)), _npy(np.zeros((1, 64), [("a", "<f4")])),
                 _npy_header((1, 64), descr="|O") + row, b"\x93NUMPY\x01\x00" + b"\xff" * 100, b"\x93NU"):
        r = post(body)
        assert r.status_code == 422 and r.json()["code"] == "invalid_inputs", (body[:80], r.text)


def test_an_npy_body_may_be_shaped_fortran_ordered_or_integer(ready):
    x = np.random.default_rng(2).uniform(0, 16, (3, 64)).round()
    as_json = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x.tolist()}, headers=C).json()
    npy = {**C, "Content-Type": "application/x-npy"}
    for array in (x.reshape(3, 8, 8), np.asfortranarray(x), x.astype(np.uint8), x.astype(">f8")):
        r = ready.post("/v1/models/m/versions/1/predict", content=_npy(array), headers=npy)
        assert r.status_code == 200 and r.json() == as_json, (array.dtype, array.shape)


def test_a_predict_body_is_bounded_by_max_predict_bytes_however_wide_the_inputs(ready):
    """The bound is what the rows can take, but never more than ``max_predict_bytes``."""
    from app.models.service import predict_body_limit

    wide = 3 * 224 * 224
    cap = 64 * 1024 * 1024
    assert predict_body_limit(width=wide, max_rows=1024, binary=False, max_bytes=cap) == cap
    assert predict_body_limit(width=wide, max_rows=1024, binary=True, max_bytes=cap) == cap
    assert predict_body_limit(width=64, max_rows=10, binary=True, max_bytes=cap) == 10 * (64 * 8 + 16) + 4096
    change_settings(ready, max_predict_bytes=4096)
    x = np.full((10, 64), 0.123456789)  # well within max_predict_rows, past 4096 bytes either way
    r = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x.tolist()}, headers=C)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
    r = ready.post("/v1/models/m/versions/1/predict", content=_npy(x),
                   headers={**C, "Content-Type": "application/x-npy"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
    r = ready.post("/v1/models/m/versions/1/predict", json={"inputs": x[:1].tolist()}, headers=C)
    assert r.status_code == 200, r.text


def test_json_nested_too_deep_is_422_not_400(ready):
    body = '{"owner_id": "x", "reason": ' + "[" * 100000 + "]" * 100000 + "}"
    for path in ("/v1/deletion-requests", "/v1/models/m/versions/1/predict"):
        r = ready.post(path, content=body, headers={**C, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (path, r.text)


def test_health_answers_while_a_prediction_runs(ready, monkeypatch):
    """Inference runs off the event loop: /healthz is answered while predict is busy."""
    import threading

    from app.models import service

    busy, release, done, real = threading.Event(), threading.Event(), threading.Event(), service.predict
    answered_while_busy = []

    def slow_predict(**kw):
        busy.set()
        release.wait(timeout=10)  # on the event loop, this would hold /healthz back until it ends
        try:
            return real(**kw)
        finally:
            done.set()

    monkeypatch.setattr(service, "predict", slow_predict)
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=ready.post(
        "/v1/models/m/versions/1/predict", json={"inputs": [[0] * 64]}, headers=C)))
    worker.start()
    assert busy.wait(timeout=20)
    answered_while_busy.append((ready.get("/healthz").status_code, done.is_set()))
    release.set()
    worker.join(timeout=30)
    assert answered_while_busy == [(200, False)] and result["r"].status_code == 200


def test_architectures_are_listed_with_their_source_and_parameters(client):
    listed = {a["name"]: a for a in client.get("/v1/architectures", headers=C).json()}
    assert listed["mlp"]["source"] == "builtin" and listed["mlp"]["parameters"] == {"hidden": 256}
    assert listed["resnet50"]["source"] == "torchvision" and listed["acme_tabular"]["source"] == "plugin"
    assert len(listed) > 80


def test_an_unknown_architecture_is_422_listing_the_known_ones(ready):
    r = ready.post("/v1/models", json={**TINY_MODEL, "name": "x", "architecture": "resnet9000"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "unknown_architecture"
    assert "mobilenet_v3_small" in r.json()["known"] and "acme_tabular" in r.json()["detail"]
    r = ready.post("/v1/models", json={**TINY_MODEL, "name": "x", "architecture_params": {"depth": 9}}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_model" and "depth" in r.json()["detail"]


def test_a_plugin_architecture_with_parameters_trains_through_the_api(ready):
    from tests.service_helpers import run_worker_inline

    body = {**TINY_MODEL, "name": "acme", "architecture": "acme_tabular", "architecture_params": {"hidden": 16}}
    assert ready.post("/v1/models", json=body, headers=A).status_code == 202
    run_worker_inline(ready.app_)
    m = ready.get("/v1/models/acme", headers=C).json()
    assert m["status"] == "ready" and m["architecture_params"] == {"hidden": 16}
    p = ready.post("/v1/models/acme/versions/1/predict", json={"inputs": [[0] * 64]}, headers=C)
    assert p.status_code == 200 and len(p.json()["probabilities"][0]) == 10


def _donor_weights(ready) -> bytes:
    """Weights 'trained elsewhere': version 1 of the fixture's model, shard 0 (an mlp)."""
    from app.engine import build_engine
    from safetensors.torch import save as st_save

    net = build_engine(ready.app_.state.settings).load("m", 1).models[0]
    return st_save({k: v.contiguous() for k, v in net.state_dict().items()})


def _import(ready, weights: bytes, **fields):
    data = {"name": "imported", "dataset": "digits", "architecture": "mlp",
            "training": '{"epochs": 2, "batch_size": 64}', **fields}
    return ready.post("/v1/models/import", data=data, files={"weights": ("w.safetensors", weights)}, headers=A)


def test_a_model_trained_elsewhere_is_imported_served_and_forgets_through_the_gate(ready):
    from tests.service_helpers import change_settings, run_worker_inline

    weights = _donor_weights(ready)
    r = _import(ready, weights)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "ready" and r.json()["latest_version"] == 1
    v1 = ready.get("/v1/models/imported/versions/1", headers=C).json()
    assert v1["kind"] == "imported" and v1["metrics"]["test_accuracy"] is not None and v1["metrics"]["ra"] is not None
    x = [[0] * 64]
    assert ready.post("/v1/models/imported/versions/1/predict", json={"inputs": x}, headers=C).status_code == 200
    assert _import(ready, weights).json()["code"] == "model_exists"
    change_settings(ready, gate_ua_tolerance=1.0, gate_mia_tolerance=1.0, gate_max_ta_drop=1.0, gate_beat_no_op=False)
    owner = ready.get("/v1/datasets/digits/owners?limit=1", headers=A).json()["owners"][0]["owner_id"]
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner, "models": ["imported"], "method": "ga"},
                     headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    mine = next(o for o in req["outcomes"] if o["model"] == "imported")
    assert req["status"] == "completed" and mine["version"] == 2 and mine["published_method"] == "ga"
    assert mine["metrics"]["gate"]["passed"] is True and mine["metrics"]["forget_size"] > 0
    assert ready.get("/v1/models/imported/versions/1", headers=C).json()["status"] == "revoked"
    events = [e["kind"] for e in ready.get("/v1/audit?model=imported", headers=A).json()["events"]]
    assert events[:2] == ["model.version_published", "model.imported"]


def test_a_torch_export_archive_is_imported_and_one_of_another_model_is_422(ready):
    import io

    import torch
    from app.engine import build_engine

    net = build_engine(ready.app_.state.settings).load("m", 1).models[0].eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 8, 8),)), buf)
    r = _import(ready, buf.getvalue(), architecture="cnn")
    assert r.status_code == 422 and r.json()["code"] == "invalid_weights" and "missing key" in r.json()["detail"]
    r = _import(ready, buf.getvalue())
    assert r.status_code == 201, r.text
    x = [[float(i % 7) for i in range(64)]]
    p = ready.post("/v1/models/imported/versions/1/predict", json={"inputs": x}, headers=C).json()
    with torch.no_grad():
        expected = torch.softmax(net(torch.tensor(x).reshape(1, 1, 8, 8) / 16), 1)[0]
    assert torch.allclose(torch.tensor(p["probabilities"][0]), expected, atol=1e-5)


def test_weights_that_do_not_fit_are_422_invalid_weights_naming_the_key(ready):
    r = _import(ready, _donor_weights(ready), architecture="cnn")
    assert r.status_code == 422 and r.json()["code"] == "invalid_weights" and "'" in r.json()["detail"]
    r = _import(ready, b"not weights at all")
    assert r.status_code == 422 and r.json()["code"] == "invalid_weights"
    r = _import(ready, _donor_weights(ready), architecture="nope")
    assert r.status_code == 422 and r.json()["code"] == "unknown_architecture"
    r = _import(ready, _donor_weights(ready), training="{not json")
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    assert ready.get("/v1/models/imported", headers=A).status_code == 404


def test_a_backbone_is_uploaded_and_a_model_starts_from_it(ready):
    from safetensors.torch import save as st_save

    from tests.service_helpers import run_worker_inline
    from workers.engine import nets

    donor = nets.build("mlp", [1, 8, 8], 3, seed=5)  # pretrained for another task: 3 classes
    weights = st_save({k: v.contiguous() for k, v in donor.state_dict().items()})
    r = ready.post("/v1/backbones", data={"dataset": "digits", "architecture": "mlp"},
                   files={"weights": ("b.safetensors", weights)}, headers=A)
    assert r.status_code == 201, r.text
    kept = r.json()
    assert kept["skipped"] == ["net.5.bias", "net.5.weight"] and "net.1.weight" in kept["keys"]
    r = ready.post("/v1/backbones", data={"dataset": "digits", "architecture": "cnn"},
                   files={"weights": ("b.safetensors", weights)}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_weights"
    body = {"name": "tuned", "dataset": "digits", "architecture": "mlp", "strategy": {"kind": "monolithic"},
            "training": {"epochs": 1, "init": "0" * 64}}
    r = ready.post("/v1/models", json=body, headers=A)
    assert r.status_code == 422 and "no stored backbone" in r.json()["detail"]
    body["training"]["init"] = kept["digest"]
    assert ready.post("/v1/models", json=body, headers=A).status_code == 202
    run_worker_inline(ready.app_)
    m = ready.get("/v1/models/tuned", headers=C).json()
    assert m["status"] == "ready" and m["training"]["init"] == kept["digest"]
    assert ready.get("/v1/models/tuned/versions/1", headers=C).json()["recipe"]["init"] == kept["digest"]


def test_an_import_whose_database_row_was_lost_is_published_when_retried(ready, monkeypatch):
    """The store has version 1, recording the model failed (the audit append raises):
    the same import again records it; weights that differ are refused."""
    import pytest

    import app.models.service as service
    from tests.service_helpers import fail_once

    fail_once(monkeypatch, service, "append", RuntimeError("the database went away"))
    weights = _donor_weights(ready)
    with pytest.raises(RuntimeError):
        _import(ready, weights)
    assert ready.get("/v1/models/imported", headers=A).status_code == 404
    r = _import(ready, weights)
    assert r.status_code == 201, r.text
    assert r.json()["latest_version"] == 1
    assert ready.get("/v1/models/imported/versions/1", headers=C).json()["kind"] == "imported"


def test_owners_with_their_own_class_mix_and_a_clustered_sisa_model_through_the_api(client):
    r = client.post("/v1/datasets", json={"name": "skewed", "source": "digits", "label_alpha": 0.1}, headers=A)
    assert r.status_code == 201, r.text
    assert r.json()["owners_assigned"]["label_alpha"] == 0.1
    bad = client.post("/v1/datasets", json={"name": "bad", "source": "digits", "label_alpha": 0}, headers=A)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    model = {**TINY_MODEL, "dataset": "skewed", "strategy": {"kind": "sisa", "shards": 2, "slices": 2,
                                                            "partition": "label"}}
    assert client.post("/v1/models", json=model, headers=A).status_code == 202
    run_worker_inline(client.app_)
    m = client.get("/v1/models/m", headers=A).json()
    assert m["status"] == "ready" and m["strategy"]["partition"] == "label"
    wrong = {**model, "name": "m2", "strategy": {**model["strategy"], "partition": "random"}}
    r = client.post("/v1/models", json=wrong, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_a_full_retrain_is_queued_run_and_published_as_a_new_version(ready):
    """POST /v1/models/{name}/retrain: a job of kind retrain retrains every shard on the
    data held now; the new version is exact, the old one stays live (it learned nothing
    the dataset no longer holds)."""
    assert ready.post("/v1/models/m/retrain", headers=C).status_code == 403
    assert ready.post("/v1/models/nope/retrain", headers=A).json()["code"] == "model_not_found"
    r = ready.post("/v1/models/m/retrain", headers=A)
    assert r.status_code == 202 and r.json()["job"]["kind"] == "retrain", r.text
    job_id = r.json()["job"]["id"]
    run_worker_inline(ready.app_)
    job = ready.get(f"/v1/jobs/{job_id}", headers=A).json()
    assert job["status"] == "completed" and job["kind"] == "retrain"
    assert job["shards_done"] == job["shards_total"] == 2
    v2 = ready.get("/v1/models/m/versions/2", headers=A).json()
    assert v2["parent"] == 1 and v2["exact"] is True and v2["requests"] == []
    assert {c["status"] for c in v2["constituents"]} == {"retrained"}
    assert ready.get("/v1/models/m/versions/1", headers=A).json()["status"] == "published"
    kinds = [e["kind"] for e in ready.get("/v1/audit?model=m&limit=1000", headers=A).json()["events"]]
    assert "model.retrain_queued" in kinds and "model.version_published" in kinds
