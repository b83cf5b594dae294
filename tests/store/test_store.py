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


def test_fsspec_write_new_is_write_once():
    backend = open_backend(f"memory://lethe-write-once-{os.getpid()}")
    assert backend.write_new("a/k", b"first") is True
    assert backend.write_new("a/k", b"second") is False
    assert backend.read("a/k") == b"first" and backend.list("a") == ["k"] and backend.list("none") == []
    assert backend.delete("a/k") is True and backend.delete("a/k") is False


@pytest.mark.parametrize("url", ["s3://AKIAEXAMPLE:hunter2-secret@bucket/lethe",
                                 "simplecache::s3://AKIAEXAMPLE:hunter2-secret@bucket/lethe",
                                 "s3://hunter2-secret@bucket/lethe"])
def test_a_store_url_with_credentials_is_refused_without_echoing_them(url):
    from app.settings import Settings
    from models_store import StoreError

    for make in (lambda: open_backend(url), lambda: Settings(store_url=url)):
        with pytest.raises(StoreError, match="carries credentials") as info:
            make()
        assert "hunter2-secret" not in str(info.value) and "AWS_ACCESS_KEY_ID" in str(info.value)
    assert Settings(store_url="s3://bucket/lethe").store_url == "s3://bucket/lethe"


def test_fsspec_write_new_retries_a_conflicting_conditional_write(monkeypatch):
    """S3 answers a conditional PUT racing another write to the key with 409
    ConditionalRequestConflict (s3fs: an OSError caused by botocore's error): try again."""
    backend = open_backend(f"memory://lethe-conflict-{os.getpid()}")
    real, calls = backend.fs.pipe_file, []

    class Conflict(Exception):
        response = {"Error": {"Code": "ConditionalRequestConflict"}}

    def pipe_file(path, data, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise OSError(5, "conflict") from Conflict()
        return real(path, data, **kwargs)

    monkeypatch.setattr(backend.fs, "pipe_file", pipe_file)
    assert backend.write_new("k", b"v") is True and backend.read("k") == b"v"
    assert calls == [{"mode": "create"}, {"mode": "create"}]
    monkeypatch.setattr(backend, "exists", lambda key: False)  # raced: the server says no
    assert backend.write_new("k", b"other") is False and backend.read("k") == b"v"
