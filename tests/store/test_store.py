"""The model store: content addressing, immutability, atomic publish, other backends."""
import os

import pytest

from models_store import LocalBackend, ModelStore, VersionConflict, open_backend
from models_store.store import BlobCorrupt, ModelExists
from tests.conftest import FAST
from workers.engine.engine import Engine
from workers.engine.sisa import Strategy


@pytest.fixture
def store(tmp_path):
    s = ModelStore(LocalBackend(tmp_path / "store"))
    s.create_model("m", {"name": "m"})
    return s


def test_equal_blobs_are_stored_once(store, tmp_path):
    a = store.put_blob(b"weights")
    b = store.put_blob(b"weights")
    assert a == b
    assert len(list((tmp_path / "store" / "objects").rglob(a))) == 1
    assert store.get_blob(a) == b"weights"


def test_a_corrupted_blob_is_detected(store, tmp_path):
    digest = store.put_blob(b"weights")
    path = next((tmp_path / "store" / "objects").rglob(digest))
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(BlobCorrupt):
        store.get_blob(digest)


def test_versions_are_numbered_and_never_overwritten(store):
    d = store.put_blob(b"x")
    v1 = store.publish("m", {"artifacts": {"w": d}}, parent=None)
    v2 = store.publish("m", {"artifacts": {"w": d}}, parent=1)
    assert (v1["version"], v2["version"], v2["parent"]) == (1, 2, 1)
    with pytest.raises(VersionConflict):
        store.publish("m", {"artifacts": {"w": d}, "other": True}, parent=1)  # derived from a stale parent
    assert "other" not in store.version("m", 2)
    assert store.backend.write_new("models/m/versions/00000002.json", b"{}") is False


def test_publishing_with_missing_artifacts_is_refused(store):
    with pytest.raises(Exception, match="not stored"):
        store.publish("m", {"artifacts": {"w": "0" * 64}}, parent=None)
    assert store.version_numbers("m") == []


def test_duplicate_model_is_refused(store):
    with pytest.raises(ModelExists):
        store.create_model("m", {"name": "m"})


def test_a_crash_mid_write_leaves_nothing_visible(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path / "s")

    def crash(*args):
        raise OSError("power cut")

    monkeypatch.setattr(os, "link", crash)
    with pytest.raises(OSError):
        backend.write_new("models/m/versions/00000001.json", b"{...partial")
    monkeypatch.undo()
    assert not backend.exists("models/m/versions/00000001.json")
    assert list((tmp_path / "s").rglob("*.tmp")) == []


def test_a_crash_between_artifact_writes_and_the_record_publishes_nothing(tmp_path, monkeypatch):
    """Simulate a crash after some checkpoints were written but before the version record."""
    engine = Engine(tmp_path / "data", device="cpu")
    engine.import_dataset("digits", "digits", seed=0)
    engine.train("m", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 2), config=FAST)
    owner = engine.dataset("digits").owners(limit=1)[0][0]

    writes = {"n": 0}
    real_write_new = engine.store.backend.write_new

    def crashing_write_new(key, data):
        writes["n"] += 1
        if writes["n"] == 3:
            raise RuntimeError("worker killed mid-publish")
        return real_write_new(key, data)

    monkeypatch.setattr(engine.store.backend, "write_new", crashing_write_new)
    with pytest.raises(RuntimeError):
        engine.unlearn("m", [owner])
    monkeypatch.undo()
    assert engine.store.version_numbers("m") == [1]
    assert engine.version("m")["version"] == 1

    # The retry (e.g. a redelivered task) brings the model in line and publishes v2.
    v2 = engine.unlearn("m", [owner])
    assert v2["version"] == 2
    assert v2["removed"]["owners"][0]["owner_id"] == owner


def test_an_fsspec_url_backs_the_store(tmp_path):
    engine = Engine(tmp_path / "data", store_url="memory://lethe-test", device="cpu")
    engine.import_dataset("digits", "digits", seed=0)
    v = engine.train("m", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 1), config=FAST)
    assert open_backend("memory://lethe-test").exists(f"models/m/versions/{v['version']:08d}.json")
    assert engine.load("m").predict_proba(engine.test_tensors(engine.dataset("digits"))[0]).shape == (360, 10)
