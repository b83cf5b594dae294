"""Importing data sets through the API: uploads (size limit, bad and good npz) and duplicate names."""
from __future__ import annotations

import io

import numpy as np
import pytest
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


def _upload(client, name: str, **arrays):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, **{"x": rng.random((40, 4)).astype(np.float32), "y": rng.integers(0, 2, 40),
                     "owner_id": np.array([f"u{i % 8}" for i in range(40)]), **arrays})
    return client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, data={"name": name}, headers=A)


@pytest.mark.parametrize("owner", ["x" * 129, "a\x00b"])
def test_an_upload_with_owner_ids_a_deletion_could_never_name_is_422(client, owner):
    r = _upload(client, "bad-owners", owner_id=np.array([owner] + [f"u{i % 8}" for i in range(39)]))
    assert r.status_code == 422 and r.json()["code"] == "invalid_dataset" and "owner_id" in r.json()["detail"]
    assert client.get("/v1/datasets/bad-owners", headers=A).status_code == 404


def test_an_upload_with_labels_past_the_class_limit_is_422(client):
    r = _upload(client, "huge-labels", y=np.array([2**62] + [0] * 39, dtype=np.int64))
    assert r.status_code == 422 and "LETHE_MAX_CLASSES" in r.json()["detail"]
    assert _upload(client, "ok-labels", y=np.array([999] + [0] * 39)).status_code == 201  # the default: 1000


def test_concurrent_creates_of_one_model_name_give_one_model_and_409s(client):
    """The database's unique key decides a race the existence check cannot see: 409."""
    from app.models import service
    from app.models.schemas import ModelCreate
    from app.errors import ApiError
    from app.tables import ModelRow

    assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
    factory = client.app_.state.sessionmaker
    body = ModelCreate(name="race", dataset="digits", architecture="mlp", strategy={"kind": "sisa", "shards": 2, "slices": 1})
    with factory() as first:
        service.create(session=first, actor="a", model_in=body)
        first.commit()
    with factory() as second:  # its existence check ran before the first committed
        real_get = second.get
        second.get = lambda cls, key, **kw: None if cls is ModelRow else real_get(cls, key, **kw)
        with pytest.raises(ApiError) as caught:
            service.create(session=second, actor="a", model_in=body)
    assert caught.value.status == 409 and caught.value.code == "model_exists"


CHURN = "customer,age,plan,label\n" + "".join(
    f"c{i % 12},{20 + i % 50},{['basic', 'pro'][i % 2]},{['stayed', 'churned'][(i // 3) % 2]}\n" for i in range(120))
TABLE = {"label_column": "label", "owner_column": "customer"}


def test_a_table_upload_imports_with_its_encoding_and_a_bad_one_names_the_line(client):
    import json

    r = client.post("/v1/datasets", files={"file": ("churn.csv", CHURN.encode())},
                    data={"name": "churn", "source": "table", "options": json.dumps(TABLE)}, headers=A)
    assert r.status_code == 201, r.text
    assert r.json()["n_samples"] == 120 and r.json()["n_owners"] == 12 and r.json()["input_shape"] == [3]
    shown = client.get("/v1/datasets/churn", headers=A).json()
    assert shown["classes"] == ["churned", "stayed"] and shown["encoding"]["features"][1]["categories"] == ["basic", "pro"]
    ragged = CHURN + "c1,30\n"
    r = client.post("/v1/datasets", files={"file": ("bad.csv", ragged.encode())},
                    data={"name": "bad", "source": "table", "options": json.dumps(TABLE)}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_dataset" and "line 122" in r.json()["detail"]
    r = client.post("/v1/datasets", files={"file": ("t.csv", CHURN.encode())},
                    data={"name": "bad", "source": "table", "options": "{nope"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = client.post("/v1/datasets", files={"file": ("t.csv", CHURN.encode())},
                    data={"name": "bad", "source": "digits"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    assert client.get("/v1/datasets/bad", headers=A).status_code == 404


def test_a_table_on_the_server_imports_by_path_only_inside_the_import_dir(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "churn.csv").write_text(CHURN)
    (tmp_path / "secret.csv").write_text(CHURN)
    body = {"name": "churn", "source": "table", "options": TABLE}
    with TestClient(make_app(tmp_path / "off")) as c:
        r = c.post("/v1/datasets", json={**body, "path": "churn.csv"}, headers=A)
        assert r.status_code == 403 and r.json()["code"] == "path_not_allowed"
    with TestClient(make_app(tmp_path / "on", import_dir=inbox)) as c:
        for outside in ("../secret.csv", ".", str(tmp_path / "secret.csv")):
            r = c.post("/v1/datasets", json={**body, "path": outside}, headers=A)
            assert r.status_code == 403 and r.json()["code"] == "path_not_allowed", outside
        r = c.post("/v1/datasets", json=body, headers=A)
        assert r.status_code == 422 and "reads a file" in r.json()["detail"]
        r = c.post("/v1/datasets", json={**body, "path": "churn.csv"}, headers=A)
        assert r.status_code == 201 and r.json()["n_samples"] == 120


def test_an_import_whose_database_row_was_lost_is_adopted_when_retried(client, monkeypatch):
    """The ledger was written, recording the row failed (here: the audit append raises):
    the same import again adopts what it wrote; another import of the name is 409."""
    import app.datasets.service as service
    from tests.service_helpers import fail_once

    fail_once(monkeypatch, service, "append", RuntimeError("the database went away"))
    with pytest.raises(RuntimeError):
        client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    assert client.get("/v1/datasets/digits", headers=A).status_code == 404  # rolled back; the ledger has it
    r = client.post("/v1/datasets", json={"name": "digits", "source": "digits", "seed": 1}, headers=A)
    assert r.status_code == 409 and r.json()["code"] == "dataset_exists"  # another import: not adopted
    r = client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    assert r.status_code == 201 and r.json()["n_samples"] == 1437
