"""End to end over HTTP: uvicorn + PostgreSQL + Redis + a real Celery worker process."""
from __future__ import annotations

import httpx
import numpy as np
import psycopg
import pytest
import torch

from lethe.client import Client
from tests.integration.conftest import poll
from tests.service_helpers import ADMIN, CLIENT, A, C
from workers.engine.engine import Engine
from workers.engine.purge import learned

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def admin(stack):
    """The Python client (``lethe.client``) with the admin key: most of these tests talk
    to the stack through it, as a user's code would."""
    with Client(stack.url, ADMIN, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def lethe(stack):
    """The Python client with a client key (the company's deletion intake)."""
    with Client(stack.url, CLIENT, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def trained(stack, admin):
    assert admin.import_dataset("digits", "digits").n_samples > 0
    admin.create_model("digits-sisa", "digits", architecture="cnn", strategy={"kind": "sisa", "shards": 3, "slices": 2},
                       training={"epochs": 3, "batch_size": 64})
    model = admin.wait_model("digits-sisa", timeout=180, every=0.3)
    assert model.status == "ready", model
    return model


def owners(admin, n):
    return [o.owner_id for o in admin.owners("digits", limit=n)]


def finished(lethe, request_id):
    return lethe.wait(request_id, timeout=180, every=0.3)


def test_training_fans_out_one_task_per_shard(stack, trained):
    assert trained.latest_version == 1
    assert stack.worker_log().count("Task lethe.train_shard[") >= 3


def test_deletion_request_end_to_end(stack, admin, lethe, trained):
    owner = owners(admin, 5)[2]
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    owner_ids = engine.dataset("digits").owner_sample_ids(owner)
    assert len(owner_ids) > 0

    first = lethe.delete(owner, reason="GDPR art. 17", idempotency_key=f"it-{owner}")
    assert first.status == "queued"
    again = lethe.delete(owner, reason="GDPR art. 17", idempotency_key=f"it-{owner}")
    assert again.id == first.id

    done = finished(lethe, first.id)
    assert done.status == "completed", done
    (outcome,) = done.outcomes
    number = outcome.version
    assert number >= 2 and outcome.method == "exact"

    version = lethe.version("digits-sisa", number)
    assert first.id in version.requests and version.parent == number - 1
    # The manifest of the new version, read back from the model store, has none of the owner's ids.
    record = engine.version("digits-sisa", number)
    assert record["manifest_digest"] == version.manifest_digest
    manifest = np.concatenate([np.concatenate(s) for s in engine.slice_ids(record)])
    assert not np.isin(owner_ids, manifest).any()
    old = np.concatenate([np.concatenate(s) for s in engine.slice_ids(engine.version("digits-sisa", 1))])
    assert np.isin(owner_ids, old).all()

    lineage = admin.owner(owner)
    assert lineage["datasets"][0]["remaining_samples"] == 0
    assert lineage["models"][0]["latest_excludes_owner"] is True

    assert admin.verify_audit().ok is True
    kinds = [e.kind for e in admin.audit(request_id=first.id)]
    assert kinds == ["request.accepted", "request.running", "request.model_unlearned", "request.completed",
                     "request.evidence_destroyed"]


def test_a_revoked_version_is_gone_for_admin_and_client_and_its_alias_moves(stack, http, admin, lethe, trained):
    latest = http.get("/v1/models/digits-sisa", headers=A).json()["latest_version"]
    r = http.put("/v1/models/digits-sisa/aliases/production", json={"version": latest}, headers=A)
    assert r.status_code == 200, r.text
    x = {"inputs": np.zeros((1, 64)).tolist()}
    assert http.post("/v1/models/digits-sisa/versions/production/predict", json=x, headers=C).status_code == 200
    owner = owners(admin, 20)[15]
    rid = http.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed", done
    new = done["outcomes"][0]["version"]
    for headers in (A, C):
        for r in (http.post(f"/v1/models/digits-sisa/versions/{latest}/predict", json=x, headers=headers),
                  http.get(f"/v1/models/digits-sisa/versions/{latest}/artifact", headers=headers)):
            assert r.status_code == 410 and r.json() | {"detail": ""} == {
                "code": "version_revoked", "detail": "", "replaced_by": new}
    old = http.get(f"/v1/models/digits-sisa/versions/{latest}", headers=C).json()
    assert old["status"] == "revoked" and rid in old["revoked_for"]
    (alias,) = http.get("/v1/models/digits-sisa/aliases", headers=C).json()
    assert alias["alias"] == "production" and alias["version"] == new
    p = http.post("/v1/models/digits-sisa/versions/production/predict", json=x, headers=C)
    assert p.status_code == 200 and p.json()["version"] == new
    kinds = [e["kind"] for e in http.get("/v1/audit?model=digits-sisa&limit=1000", headers=A).json()["events"]]
    assert "model.version_revoked" in kinds and "alias.moved" in kinds and "store.purged" in kinds
    # Purged at once (LETHE_PURGE_AFTER_HOURS=0): what the revoked version learned is gone from
    # the store; the live version kept every byte and predicts exactly what it did when published.
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    revoked, live = engine.version("digits-sisa", latest), engine.version("digits-sisa", new)
    gone = learned(revoked) - set(live["artifacts"].values())
    assert gone and not any(engine.store.has_blob(d) for d in gone)
    assert http.get(f"/v1/models/digits-sisa/versions/{latest}", headers=C).json()["purged_at"] is not None
    assert engine.verify("digits-sisa", new)["ok"] and engine.verify("digits-sisa", latest)["ok"]
    x_raw = np.asarray(x["inputs"], dtype=np.float32)
    local = engine.load("digits-sisa", new).predict_proba(
        torch.as_tensor(x_raw.reshape(1, 1, 8, 8) * np.float32(1 / 16))).numpy().astype(float).round(6).tolist()
    assert p.json()["probabilities"] == local


def test_auto_deletion_is_verified_published_and_audited(stack, http, admin, lethe, trained):
    """method=auto: the approximate candidate is measured and gated; whichever attempt is
    published, the version carries the metrics and the request's audit trail shows the gate."""
    owner = owners(admin, 12)[9]
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    owner_ids = engine.dataset("digits").owner_sample_ids(owner)
    r = http.post("/v1/deletion-requests", json={"owner_id": owner, "method": "auto"}, headers=C)
    assert r.status_code == 202 and r.json()["method"] == "auto"
    done = finished(lethe, r.json()['id']).model_dump(mode="json")
    assert done["status"] == "completed", done
    (outcome,) = done["outcomes"]
    version = http.get(f"/v1/models/digits-sisa/versions/{outcome['version']}", headers=C).json()
    for key in ("ua", "ra", "ta", "mia_efficacy", "loss_auc", "l2_to_parent", "rte_seconds"):
        assert version["metrics"][key] is not None, key
    assert outcome["metrics"]["ua"] == version["metrics"]["ua"]
    events = http.get(f"/v1/audit?request_id={done['id']}&limit=200", headers=A).json()["events"]
    attempts = [e["data"] for e in events if e["kind"] == "unlearning.attempt"]
    assert all(a["method"] != "exact" for a in attempts)
    if attempts and attempts[-1]["passed"]:  # the first that passed is published
        assert version["method"] == attempts[-1]["method"] and version["exact"] is False
        assert not any(a["passed"] for a in attempts[:-1])
    elif attempts:  # every candidate failed: retrained exactly
        assert version["method"] == "exact" and version["exact"] is True and "fallback_gap" in version["metrics"]
        assert [t["method"] for t in version["metrics"]["auto_tried"]] == [a["method"] for a in attempts]
    else:  # doing nothing was within the gate's margin already: no candidate was tried
        assert version["method"] == "exact" and "no method could pass" in version["metrics"]["auto_skipped"]
    record = engine.version("digits-sisa", outcome["version"])
    manifest = np.concatenate([np.concatenate(s) for s in engine.slice_ids(record)])
    assert not np.isin(owner_ids, manifest).any()
    assert not any((engine.data_dir / "evidence").glob("*/*"))  # the sealed forget rows are gone too
    assert http.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_client_key_cannot_read_the_audit_log(http):
    r = http.get("/v1/audit", headers=C)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_postgres_rejects_changes_to_the_audit_log(stack, trained):
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 1")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_events")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("TRUNCATE audit_events")


def test_the_application_role_can_only_read_and_append_the_audit_log(stack, trained):
    """The API and the worker connect as lethe_app (this whole module runs that way); it
    does not own audit_events, so it cannot change it, empty it, or switch off its triggers."""
    with psycopg.connect(stack.app_db_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "lethe_app"
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] > 0
        for statement in ("UPDATE audit_events SET actor = 'x' WHERE seq = 1", "DELETE FROM audit_events",
                          "TRUNCATE audit_events", "ALTER TABLE audit_events DISABLE TRIGGER USER",
                          "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change",
                          "DROP TRIGGER audit_events_no_change ON audit_events",
                          # a key that ever signed stays as it is (0008): none can be swapped in
                          "UPDATE signing_keys SET public_jwk = '{}'", "DELETE FROM signing_keys",
                          "TRUNCATE signing_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM signing_keys").fetchone()[0] >= 1


def test_accepted_request_survives_a_worker_crash(stack, http, trained):
    """Kill the whole worker mid-job; a new worker resumes the job once its lease runs out."""
    r = http.post("/v1/models", headers=A, json={
        "name": "slow", "dataset": "digits", "architecture": "cnn", "strategy": {"kind": "monolithic"},
        "training": {"epochs": 40, "batch_size": 32}})
    assert r.status_code == 202
    model = poll(lambda: http.get("/v1/models/slow", headers=A).json(), lambda m: m["status"] in ("training", "ready"))
    assert model["status"] == "training", "the job must still be running when the worker is killed"
    model = poll(lambda: http.get("/v1/models/slow", headers=A).json(), lambda m: m["job"]["progress"], timeout=30)
    assert "shard 0" in model["job"]["progress"] and model["status"] == "training"
    stack.kill_worker()
    stack.start_worker()
    model = poll(lambda: http.get("/v1/models/slow", headers=A).json(), lambda m: m["status"] in ("ready", "failed"),
                 timeout=300)
    assert model["status"] == "ready", model
    kinds = [e["kind"] for e in http.get("/v1/audit?model=slow&limit=1000", headers=A).json()["events"]]
    assert "job.resumed" in kinds
    assert http.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_metrics_over_http_add_up_the_api_and_worker_processes(stack, http, trained):
    """GET /metrics on the real stack: the state read from PostgreSQL and Redis, and the
    worker's counters (its pool processes write beside the API's, in the data directory);
    the worker also serves its own on LETHE_WORKER_METRICS_PORT."""
    from tests.api.test_metrics import sample

    text = http.get("/metrics").text
    assert sample(text, "lethe_database_up") == 1
    assert sample(text, "lethe_queue_depth", queue="gpu") is not None  # read from Redis
    assert sample(text, "lethe_deletion_requests", status="completed") >= 1
    assert sample(text, "lethe_jobs", kind="train", status="completed") >= 1
    assert sample(text, "lethe_shard_train_seconds_count", kind="train") >= 3  # counted by the pool processes
    assert sample(text, "lethe_http_requests_total", route="/v1/models/{name}", method="GET", status="200") >= 1
    worker = httpx.get(f"http://127.0.0.1:{stack.env['LETHE_WORKER_METRICS_PORT']}/metrics", timeout=10).text
    assert sample(worker, "lethe_shard_train_seconds_count", kind="train") >= 3
    assert sample(worker, "lethe_job_duration_seconds_count", kind="train", method="train") >= 1


def test_json_logs_follow_a_deletion_by_its_request_id_and_never_name_the_owner(stack, http, admin, lethe, trained):
    """The API process and the worker process log JSON lines; the POST's X-Request-ID is
    on the access line, the outbox relay's send, the advance task, and every line of the
    job that served the deletion (its shards, its finish)."""
    import json

    owner = owners(admin, 30)[21]
    r = http.post("/v1/deletion-requests", json={"owner_id": owner, "reason": "a private reason"},
                  headers={**C, "X-Request-ID": "it-trace-0001"})
    assert r.status_code == 202 and r.headers["x-request-id"] == "it-trace-0001"
    done = finished(lethe, r.json()['id']).model_dump(mode="json")
    assert done["status"] == "completed", done
    api_text, worker_text = (stack.tmp / "api.log").read_text(), stack.worker_log()
    api = [json.loads(line) for line in api_text.splitlines() if line.startswith("{")]
    worker = [json.loads(line) for line in worker_text.splitlines() if line.startswith("{")]
    assert api and worker

    def traced(records):
        return [x for x in records if x.get("request_id") == "it-trace-0001"
                or "it-trace-0001" in (x.get("request_ids") or [])]

    assert any(x["msg"].startswith("POST /v1/deletion-requests 202") for x in traced(api))
    assert any(x["msg"].startswith("outbox: sent lethe.advance") for x in traced(api))
    mine = [x for x in traced(worker) if r.json()["id"] in (x.get("deletion_ids") or [])]
    assert any("running shard" in x["msg"] for x in mine)
    assert {x.get("task") for x in traced(worker)} >= {"lethe.advance", "lethe.train_shard", "lethe.finish_job"}
    for text in (api_text, worker_text):
        assert owner not in text and "a private reason" not in text


def test_readyz_reports_database_and_broker(http):
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_a_failing_deletion_is_retried_then_fails_then_an_admin_retry_completes_it(stack, http, admin, lethe, trained):
    """The store loses the test-set outputs the next version needs: each try fails, is
    retried with back-off, and the request fails after the last; restored, an admin
    retry completes it. Every request carries its deadline."""
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    latest = engine.version("digits-sisa", "latest")
    lost = {c["test_probs"]: engine.store.get_blob(c["test_probs"]) for c in latest["constituents"] if c["test_probs"]}
    for digest in lost:
        engine.store.delete_blob(digest)
    owner = owners(admin, 30)[25]
    req = http.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()
    assert req["overdue"] is False and req["due_at"] > req["created_at"]
    failed = finished(lethe, req['id']).model_dump(mode="json")
    assert failed["status"] == "failed" and failed["outcomes"][0]["attempts"] == 3, failed
    assert "missing from the store" in failed["failure_reason"]
    kinds = [e["kind"] for e in http.get(f"/v1/audit?request_id={req['id']}", headers=A).json()["events"]]
    assert kinds.count("request.retry_scheduled") == 2 and kinds[-2:] == [
        "request.failed", "request.evidence_destroyed"]
    for blob in lost.values():
        engine.store.put_blob(blob)
    r = http.post(f"/v1/deletion-requests/{req['id']}/retry", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    done = finished(lethe, req['id']).model_dump(mode="json")
    assert done["status"] == "completed", done
    # Its evidence was destroyed when it failed: the retried outcome says so, not nulls.
    assert "no longer held" in done["outcomes"][0]["metrics"]["forget_metrics_unavailable"]
    assert http.get("/v1/deletion-requests?overdue=true", headers=A).json() == []


def test_a_completed_request_has_a_certificate_that_pyjwt_and_the_cli_verify(stack, admin, lethe, trained, tmp_path):
    """Filed, followed and fetched with the CLI against the server (``--url``), checked by
    the client (against the server's JWKS) and by the CLI offline."""
    import json

    import jwt

    owner = owners(admin, 40)[35]
    remote = {"LETHE_URL": stack.url, "LETHE_API_KEY": CLIENT}
    filed = stack.run("--json", "delete", "--owner", owner, "--wait", **remote)
    assert filed.returncode == 0, filed.stderr
    rid = json.loads(filed.stdout)["id"]
    status = stack.run("status", rid, **remote)
    assert status.returncode == 0 and f"request {rid}: completed" in status.stdout, status.stderr
    done = lethe.deletion(rid)
    assert done.status == "completed", done
    got = stack.run("certificate", "get", rid, "--output", str(tmp_path / "cert.json"), **remote)
    assert got.returncode == 0, got.stderr
    token = json.loads((tmp_path / "cert.json").read_text())["certificate"]
    claims = lethe.verify_certificate(token)
    versions = {o.model: o.version for o in done.outcomes}
    assert claims["request_id"] == rid and {m["model"]: m["version"] for m in claims["models"]} == versions
    (model,) = [m for m in claims["models"] if m["model"] == "digits-sisa"]
    assert model["revoked_versions"] and model["revoked_versions"][0]["purged_at"]
    with pytest.raises(jwt.InvalidSignatureError):
        lethe.verify_certificate(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    checked = stack.run("certificate", "verify", str(tmp_path / "cert.json"), "--jwks", f"{stack.url}/.well-known/jwks.json")
    assert checked.returncode == 0 and "certificate OK" in checked.stdout, checked.stderr
    # Another client's key sees no such request: the CLI says so with the server's code.
    other = stack.run("status", rid, LETHE_URL=stack.url, LETHE_API_KEY="client-key-2")
    assert other.returncode == 2 and "error [request_not_found]" in other.stderr


def test_two_models_on_one_dataset_are_both_measured_and_nothing_keeps_the_owner(stack, http, admin, lethe, trained):
    """A request naming one of two models on a dataset covers both; each outcome is
    measured on the owner's real rows (sealed evidence); afterwards neither the data
    directory, nor Redis (broker and results), nor a log holds the owner's rows, id or
    reason."""
    import redis

    r = http.post("/v1/datasets", json={"name": "digits2", "source": "digits", "seed": 7}, headers=A)
    assert r.status_code == 201, r.text
    for name in ("d2-a", "d2-b"):
        r = http.post("/v1/models", headers=A, json={
            "name": name, "dataset": "digits2", "architecture": "mlp",
            "strategy": {"kind": "sisa", "shards": 2, "slices": 2}, "training": {"epochs": 2, "batch_size": 64}})
        assert r.status_code == 202, r.text
    for name in ("d2-a", "d2-b"):
        m = admin.wait_model(name, timeout=180, every=0.3).model_dump(mode="json")
        assert m["status"] == "ready", m
    owner = http.get("/v1/datasets/digits2/owners?limit=1", headers=A).json()["owners"][0]["owner_id"]
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    ds = engine.dataset("digits2")
    arrays = ds.load_arrays()
    mine = np.isin(arrays.sample_ids, ds.owner_sample_ids(owner))
    others = {row.tobytes() for row in arrays.x[~mine]}
    unique = [row for row in arrays.x[mine] if row.tobytes() not in others]
    assert unique
    reason = "integration-reason-please-forget-5550100"
    rid = http.post("/v1/deletion-requests", json={"owner_id": owner, "models": ["d2-a"], "method": "auto",
                                                   "reason": reason}, headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed" and done["models"] == ["d2-a", "d2-b"], done
    for outcome in done["outcomes"]:
        assert outcome["metrics"]["forget_size"] == int(mine.sum()), outcome
        assert outcome["metrics"]["ua"] is not None and outcome["metrics"]["mia_efficacy"] is not None
    kinds = [e["kind"] for e in http.get(f"/v1/audit?request_id={rid}&limit=200", headers=A).json()["events"]]
    assert kinds.count("request.evidence_destroyed") == 1
    assert not (engine.data_dir / "evidence" / rid).exists()

    forms = [form for row in unique for form in (row.tobytes(), (row.astype(np.float32) / 16).tobytes())]
    other = engine.data_dir / "datasets" / "digits"  # the same images, as other owners' rows
    for path in engine.data_dir.rglob("*"):
        if path.is_file() and other not in path.parents:
            data = path.read_bytes()
            assert not any(form in data for form in forms), f"{path} holds a row of the erased owner"
    client = redis.Redis.from_url(stack.env["LETHE_BROKER_URL"])
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values = ([client.get(key)] if kind == b"string" else client.lrange(key, 0, -1) if kind == b"list"
                  else list(client.hgetall(key).values()) if kind == b"hash" else
                  client.zrange(key, 0, -1) if kind == b"zset" else list(client.smembers(key)) if kind == b"set" else [])
        for value in [key, *values]:
            value = value or b""
            assert owner.encode() not in value and reason.encode() not in value, key
            assert not any(form in value for form in forms), key
    logs = stack.worker_log() + (stack.tmp / "api.log").read_text()
    assert owner not in logs and reason not in logs



@pytest.mark.parametrize("architecture,params", [("mobilenet_v3_small", {}), ("acme_tabular", {"hidden": 32})])
def test_a_torchvision_and_a_plugin_model_train_as_sisa_and_forget(stack, http, admin, lethe, trained, architecture, params):
    """The worker process builds them by name: torchvision's get_model, and the example
    plugin installed from examples/lethe-plugin-example."""
    name = f"arch-{architecture.replace('_', '-')}"
    r = http.post("/v1/models", headers=A, json={
        "name": name, "dataset": "digits", "architecture": architecture, "architecture_params": params,
        "strategy": {"kind": "sisa", "shards": 2, "slices": 1}, "training": {"epochs": 1, "batch_size": 64}})
    assert r.status_code == 202, r.text
    m = admin.wait_model(name, timeout=180, every=0.3).model_dump(mode="json")
    assert m["status"] == "ready", m
    owner = owners(admin, 70)[55 if architecture == "acme_tabular" else 60]
    rid = http.post("/v1/deletion-requests", json={"owner_id": owner, "models": [name]},
                    headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed", done
    mine = next(o for o in done["outcomes"] if o["model"] == name)
    assert mine["version"] == 2 and mine["metrics"]["forget_size"] > 0


def test_an_imported_model_is_served_and_unlearned_through_the_gate(stack, http, admin, lethe, trained):
    import io

    from safetensors.torch import save as st_save

    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    net = engine.load("digits-sisa", "latest").models[0]  # "trained elsewhere": a cnn on digits
    weights = st_save({k: v.contiguous() for k, v in net.state_dict().items()})
    imported = admin.import_model("imported-cnn", "digits", "cnn", io.BytesIO(weights),
                                  training={"epochs": 1, "batch_size": 64})
    assert imported.latest_version == 1
    v1 = lethe.version("imported-cnn", 1)
    assert v1.kind == "imported" and v1.metrics["test_accuracy"] is not None
    rid = http.post("/v1/deletion-requests", json={"owner_id": owners(admin, 70)[50], "models": ["imported-cnn"],
                                                   "method": "auto"}, headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed", done
    mine = next(o for o in done["outcomes"] if o["model"] == "imported-cnn")
    assert mine["version"] == 2 and mine["metrics"]["forget_size"] > 0
    # published by the method that passed the gate, or retrained after every try failed it
    assert "gate" in mine["metrics"] or mine["metrics"].get("auto_tried") or mine["metrics"].get("auto_skipped")
    events = http.get(f"/v1/audit?request_id={rid}&limit=200", headers=A).json()["events"]
    tried = any(e["kind"] == "unlearning.attempt" and e["model"] == "imported-cnn" for e in events)
    assert tried or mine["metrics"].get("auto_skipped")  # gated, or nothing could have passed the gate


def test_an_uploaded_table_trains_as_sisa_and_forgets_an_owner(stack, http, admin, lethe, tmp_path):
    """A CSV with string labels and a categorical column, uploaded over HTTP; the worker
    process trains it from the ledger's chunks and a client's request forgets a customer."""
    rng = np.random.default_rng(3)
    lines = ["customer,age,spend,plan,label"]
    for i in range(400):
        spend, plan = rng.normal(100, 30), ["basic", "plus", "pro"][i % 3]
        label = "churned" if (spend < 100) != (plan == "pro") else "stayed"
        lines.append(f"cust-{i % 40:03d},{20 + i % 60},{spend:.2f},{plan},{label}")
    csv = tmp_path / "churn.csv"
    csv.write_text("\n".join(lines))
    churn = admin.upload_dataset("churn", csv, source="table",
                                 options={"label_column": "label", "owner_column": "customer"})
    assert churn.n_samples == 400 and churn.n_owners == 40
    r = http.post("/v1/models", headers=A, json={
        "name": "churn-mlp", "dataset": "churn", "architecture": "mlp",
        "strategy": {"kind": "sisa", "shards": 2, "slices": 2},
        "training": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "schedule": "cosine"}})
    assert r.status_code == 202, r.text
    m = admin.wait_model("churn-mlp", timeout=180, every=0.3).model_dump(mode="json")
    assert m["status"] == "ready", m
    rid = http.post("/v1/deletion-requests", json={"owner_id": "cust-007", "models": ["churn-mlp"]},
                    headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed", done
    mine = next(o for o in done["outcomes"] if o["model"] == "churn-mlp")
    assert mine["version"] == 2 and mine["metrics"]["forget_size"] == 10
    owners_left = http.get("/v1/datasets/churn/owners?limit=100", headers=A).json()["owners"]
    assert "cust-007" not in {o["owner_id"] for o in owners_left} and len(owners_left) == 39


def test_an_uploaded_image_folder_trains_as_sisa_and_forgets_an_owner(stack, http, admin, lethe):
    """A zip of <class>/<file> PNGs with owners.csv, uploaded over HTTP, decoded by
    torchvision; the worker trains a cnn on it and a client's request forgets an owner."""
    import io
    import zipfile

    from torchvision.io import encode_png

    rng = np.random.default_rng(5)
    buf, owners_csv = io.BytesIO(), ["path,owner_id"]
    with zipfile.ZipFile(buf, "w") as z:
        for c, name in enumerate(["circle", "square", "stripe"]):
            for i in range(30):
                img = rng.integers(0, 60, (1, 12, 12), dtype=np.uint8)
                img[0, 2 + c * 3: 5 + c * 3, :] = 250  # each class lights up its own rows
                z.writestr(f"shapes/{name}/{i:02d}.png", encode_png(torch.from_numpy(img)).numpy().tobytes())
                owners_csv.append(f"{name}/{i:02d}.png,painter-{(i + c) % 15:02d}")
        z.writestr("shapes/owners.csv", "\n".join(owners_csv))
    buf.seek(0)
    shapes = admin.upload_dataset("shapes", buf, source="image-folder", options={"channels": 1},
                                  filename="shapes.zip")
    assert shapes.input_shape == [1, 12, 12] and shapes.classes == ["circle", "square", "stripe"]
    r = http.post("/v1/models", headers=A, json={
        "name": "shapes-cnn", "dataset": "shapes", "architecture": "cnn",
        "strategy": {"kind": "sisa", "shards": 2, "slices": 1}, "training": {"epochs": 3, "batch_size": 16}})
    assert r.status_code == 202, r.text
    m = admin.wait_model("shapes-cnn", timeout=180, every=0.3).model_dump(mode="json")
    assert m["status"] == "ready", m
    rid = http.post("/v1/deletion-requests", json={"owner_id": "painter-03", "models": ["shapes-cnn"]},
                    headers=C).json()["id"]
    done = finished(lethe, rid).model_dump(mode="json")
    assert done["status"] == "completed", done
    mine = next(o for o in done["outcomes"] if o["model"] == "shapes-cnn")
    assert mine["version"] == 2 and mine["metrics"]["forget_size"] == 6


def test_webhooks_are_signed_and_outlive_an_api_crash(stack, admin, lethe, trained):
    """A subscriber that is down when the request completes: the delivery waits in the
    database, the API process is killed and started again, and once the receiver is up
    the same delivery (same webhook-id) arrives, signed, naming no owner."""
    import json

    from standardwebhooks import Webhook

    from tests.receiver import Receiver

    with Receiver(statuses=[503] * 1000) as receiver:
        hook = admin.add_webhook(receiver.url, ["request.completed", "model.version_published"])
        owner = owners(admin, 50)[44]
        rid = lethe.delete(owner, reason="webhook reason 5550199").id
        done = finished(lethe, rid)
        assert done.status == "completed"
        expected = 1 + len(done.outcomes)  # the request, and a version of each model it covered
        poll(lambda: admin.deliveries(hook.id), lambda ds: len(ds) == expected and all(d.attempts >= 1 for d in ds),
             timeout=60)
        stack.kill_api()
        receiver.statuses.clear()  # the receiver is back
        stack.start_api()
        delivered = poll(lambda: admin.deliveries(hook.id), lambda ds: all(d.status == "delivered" for d in ds),
                         timeout=60)
        admin.remove_webhook(hook.id)
    assert sorted(d.event for d in delivered) == ["model.version_published"] * (expected - 1) + ["request.completed"]
    assert {d.payload["data"]["model"] for d in delivered if d.event != "request.completed"} == {
        o.model for o in done.outcomes}
    verifier = Webhook(hook.secret)
    bodies = {json.loads(b)["type"]: verifier.verify(b, h) for h, b in receiver.received}  # every attempt signed
    assert {h["webhook-id"] for h, _ in receiver.received} == {d.id for d in delivered}
    assert bodies["request.completed"]["data"]["request_id"] == rid
    assert all(d.attempt_log[-1]["status_code"] == 200 and d.attempt_log[0]["status_code"] == 503 for d in delivered)
    for _, body in receiver.received:
        assert owner.encode() not in body and b"5550199" not in body
    assert [w.id for w in admin.webhooks()] == []


def test_a_training_job_streams_its_progress_as_server_sent_events(stack, http, admin, trained):
    """Over real HTTP while the real worker trains: progress events with each shard's
    epoch, samples/s and ETA, then ``end`` when the job completes. Last in the module:
    its dataset shares the owner ids of ``digits``, so a later deletion would reach it."""

    # a dataset of its own: the other tests' deletions must not reach this model
    assert http.post("/v1/datasets", json={"name": "digits-sse", "source": "digits"}, headers=A).status_code == 201
    r = http.post("/v1/models", headers=A, json={
        "name": "digits-progress", "dataset": "digits-sse", "architecture": "cnn",
        "strategy": {"kind": "sisa", "shards": 2, "slices": 2}, "training": {"epochs": 40, "batch_size": 16}})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]
    docs, ended = [], None
    with httpx.Client(base_url=stack.url, timeout=120) as sse:  # the stream's media type, over plain HTTP
        with sse.stream("GET", f"/v1/jobs/{job_id}/events", headers=A) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
    for event in admin.job_events(job_id, timeout=120):  # the client reads the events
        if event.event == "progress":
            docs.append(event.data)
        else:
            ended = event.data
    assert ended == {"status": "completed"} and docs[-1]["phase"] == "completed"
    training = [s for d in docs for s in d["shards"] if s["phase"] == "training"]
    assert training, [d["phase"] for d in docs]  # seen while it trained, not only at the end
    assert all(s["epochs"] == 40 and 1 <= s["epoch"] <= 40 and s["samples_per_s"] > 0 for s in training)
    assert docs[-1]["shards_done"] == docs[-1]["shards_total"] == 2


def test_the_cli_trains_on_a_remote_server_and_follows_its_job(stack, admin, trained):
    """``lethe --url U train``: the model is queued on the server and the CLI follows its
    job's events to the end (off a terminal: progress lines); on the dataset of the test
    above, so no other test's deletion reaches it."""
    import json

    if "digits-sse" not in {d.name for d in admin.datasets()}:  # run alone, without the test above
        admin.import_dataset("digits-sse", "digits")
    run = stack.run("--json", "--url", stack.url, "--key", ADMIN, "train", "remote-mlp", "--dataset", "digits-sse",
                    "--arch", "mlp", "--shards", "2", "--slices", "1", "--epochs", "2")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["version"] == 1 and "shard" in run.stderr
    assert admin.model("remote-mlp").status == "ready"
    again = stack.run("--url", stack.url, "--key", ADMIN, "train", "remote-mlp", "--dataset", "digits-sse")
    assert again.returncode == 2 and "error [model_exists]" in again.stderr
    down = stack.run("--url", "http://127.0.0.1:9", "status", "nope")
    assert down.returncode == 2 and "error [server_unreachable]" in down.stderr
