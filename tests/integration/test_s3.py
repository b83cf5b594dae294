"""The model store on S3, end to end: a real ``moto_server`` process stands in for S3, and
the stack (uvicorn + a Celery worker + PostgreSQL + Redis, as in test_service.py) runs with
``LETHE_STORE_URL=s3://lethe-test/store``, the endpoint and the credentials in the
environment. Train -> delete -> publish -> verify -> purge goes through the HTTP API; what
lands in (and leaves) the bucket is read back with boto3."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import httpx
import numpy as np
import pytest
from botocore.config import Config

from models_store import ModelStore, open_backend
from tests.integration.conftest import (
    APP_PASSWORD,
    ROOT,
    Stack,
    _admin_conn,
    _free_port,
    poll,
    require_postgres,
)
from tests.service_helpers import A, C
from workers.engine.purge import learned

pytestmark = pytest.mark.integration

BUCKET, PREFIX = "lethe-test", "store"
STORE_URL = f"s3://{BUCKET}/{PREFIX}"
KEY_ID, SECRET = "lethe-it-key", "lethe-it-secret"  # moto takes any credentials
MODEL = "s3-sisa"


class S3:
    """A ``moto_server`` process on a free port, and a boto3 client for it."""

    def __init__(self, log):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
                                   aws_secret_access_key=SECRET, region_name="us-east-1",
                                   config=Config(retries={"max_attempts": 1}))
        deadline = time.time() + 60
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start:\n" + log.read_text()) from None
                time.sleep(0.2)

    def env(self, tmp) -> dict[str, str]:
        """What a Lethe process needs to reach the bucket: the standard AWS variables, and
        nothing from this machine's ~/.aws."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"), "AWS_EC2_METADATA_DISABLED": "true"}

    def keys(self, prefix: str = "") -> set[str]:
        """Every key under ``<PREFIX>/<prefix>`` in the bucket, relative to the store's root."""
        out = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{prefix}"):
            out.update(o["Key"][len(PREFIX) + 1:] for o in page.get("Contents", []))
        return out

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["Body"].read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(s3, tmp_path_factory):
    """The stack of tests/integration/conftest.py with its model store in the bucket."""
    require_postgres("integration tests")
    tmp = tmp_path_factory.mktemp("s3-stack")
    s = Stack(tmp)
    s.env.update(s3.env(tmp), LETHE_STORE_URL=STORE_URL)
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{s.db_name}"')
    try:
        migrated = s.run("migrate", LETHE_DATABASE_URL=s.db_url, LETHE_APP_DB_PASSWORD=APP_PASSWORD)
        assert migrated.returncode == 0, migrated.stderr
        s.start_worker()
        s.start_api()
        yield s
    finally:
        s.stop()
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{s.db_name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def store(s3):
    """The test's own view of the store in the bucket (credentials passed, not from the environment)."""
    return ModelStore(open_backend(STORE_URL, key=KEY_ID, secret=SECRET, endpoint_url=s3.endpoint))


@pytest.fixture(scope="module")
def trained(stack, http):
    r = http.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A)
    assert r.status_code == 201, r.text
    r = http.post("/v1/models", headers=A, json={
        "name": MODEL, "dataset": "digits", "architecture": "mlp",
        "strategy": {"kind": "sisa", "shards": 2, "slices": 2}, "training": {"epochs": 2, "batch_size": 64}})
    assert r.status_code == 202, r.text
    model = poll(lambda: http.get(f"/v1/models/{MODEL}", headers=A).json(),
                 lambda m: m["status"] in ("ready", "failed"))
    assert model["status"] == "ready", model
    return model


def test_a_trained_model_lands_in_the_bucket_not_on_local_disk(stack, s3, store, trained):
    assert trained["latest_version"] == 1
    keys = s3.keys()
    assert {f"models/{MODEL}/model.json", f"models/{MODEL}/versions/00000001.json"} <= keys
    record = json.loads(s3.read(f"models/{MODEL}/versions/00000001.json"))
    blobs = {f"objects/sha256/{d[:2]}/{d}" for d in record["artifacts"].values()}
    assert blobs and blobs <= keys, blobs - keys
    assert not (stack.tmp / "data" / "models_store").exists()
    # The store reads back through fsspec what the service wrote.
    assert store.version_numbers(MODEL) == [1] and MODEL in store.model_names()
    digest = record["artifacts"][next(iter(record["artifacts"]))]
    assert store.get_blob(digest) == s3.read(f"objects/sha256/{digest[:2]}/{digest}")


def test_deletion_publishes_on_s3_and_purges_the_revoked_versions_learned_artifacts(stack, s3, store, http, trained):
    owner = http.get("/v1/datasets/digits/owners?limit=5", headers=A).json()["owners"][2]["owner_id"]
    rid = http.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    done = poll(lambda: http.get(f"/v1/deletion-requests/{rid}", headers=C).json(),
                lambda r: r["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    (outcome,) = done["outcomes"]
    new = outcome["version"]
    assert new == 2 and outcome["method"] == "exact"

    version = http.get(f"/v1/models/{MODEL}/versions/{new}", headers=C).json()
    assert rid in version["requests"] and version["parent"] == 1
    revoked, live = store.version(MODEL, 1), store.version(MODEL, new)
    assert live["parent"] == 1 and live["manifest_digest"] == version["manifest_digest"]
    # The worker purges right after it completes the request (LETHE_PURGE_AFTER_HOURS=0).
    old = poll(lambda: http.get(f"/v1/models/{MODEL}/versions/1", headers=C).json(),
               lambda v: v["purged_at"] is not None, timeout=60)
    assert old["status"] == "revoked" and rid in old["revoked_for"]
    keys = s3.keys()
    assert f"models/{MODEL}/versions/{new:08d}.json" in keys
    assert {f"models/{MODEL}/revocations/00000001.json", f"models/{MODEL}/purges/00000001.json"} <= keys
    # What version 1 learned and version 2 does not share is gone from the bucket; every
    # byte version 2 needs is still there.
    gone = learned(revoked) - set(live["artifacts"].values())
    assert gone
    assert not {f"objects/sha256/{d[:2]}/{d}" for d in gone} & keys
    assert {f"objects/sha256/{d[:2]}/{d}" for d in live["artifacts"].values()} <= keys
    assert set(json.loads(s3.read(f"models/{MODEL}/purges/00000001.json"))["digests"]) == gone
    assert store.purge(MODEL, 1)["digests"] == sorted(gone)

    # The new version is served from the bucket.
    p = http.post(f"/v1/models/{MODEL}/versions/{new}/predict", json={"inputs": np.zeros((1, 64)).tolist()},
                  headers=C)
    assert p.status_code == 200 and p.json()["version"] == new, p.text
    kinds = [e["kind"] for e in http.get(f"/v1/audit?model={MODEL}&limit=1000", headers=A).json()["events"]]
    assert "model.version_revoked" in kinds and "store.purged" in kinds


def test_the_audit_chain_verifies_and_its_anchors_are_in_the_bucket(s3, http, trained):
    anchors = poll(lambda: s3.keys("audit/anchors/"), bool, timeout=60)
    assert all(k.endswith(".jws") for k in anchors)
    assert any(k.startswith("audit/keys/") and k.endswith(".jwk") for k in s3.keys("audit/"))
    chain = http.get("/v1/audit/verify", headers=A).json()
    assert chain["ok"] is True, chain


def test_write_new_is_a_conditional_put_on_s3(s3, store, monkeypatch):
    """Write-once is the server's decision (If-None-Match), not only the exists() check
    before it: with that check blinded, the second write still loses and changes nothing."""
    backend = store.backend
    key = f"it/write-once-{time.time_ns()}"
    assert backend.write_new(key, b"first") is True
    assert backend.write_new(key, b"second") is False
    assert key.rsplit("/", 1)[1] in backend.list("it") and backend.size(key) == 5
    with monkeypatch.context() as m:
        m.setattr(backend, "exists", lambda key: False)
        assert backend.write_new(key, b"third") is False
        assert s3.read(key) == b"first"
        # A retried write of the same bytes (its first try had landed) counts as written.
        assert backend.write_new(key, b"first") is True
    assert backend.delete(key) is True and backend.delete(key) is False
    assert not backend.exists(key) and backend.list("no-such-prefix") == []


def test_a_store_url_with_credentials_is_refused_at_start_up(stack):
    """The API stops before it serves (the worker and every CLI command build the same
    Settings, which refuse it: tests/store)."""
    env = {**stack.env, "LETHE_STORE_URL": f"s3://{KEY_ID}:{SECRET}@{BUCKET}/{PREFIX}"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "api", "--port", str(_free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "carries credentials" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr

