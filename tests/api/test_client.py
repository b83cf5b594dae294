"""The Python client (``lethe.client``) and the CLI's remote commands, against the API
in-process (the same HTTP, through the test client's transport). The integration stack
runs them against a real server."""
from __future__ import annotations

import json

import jwt
import pytest

import lethe.client
from app.cli import main
from lethe.client import ApiError, Client
from tests.service_helpers import ADMIN, CLIENT, CLIENT2, run_worker_inline


def connect(test_client, key: str) -> Client:
    return Client("http://testserver", key, transport=test_client._transport)


def test_datasets_models_versions_and_predictions_are_typed(ready):
    admin = connect(ready, ADMIN)
    (ds,) = admin.datasets()
    assert ds.name == "digits" and ds.n_samples > 0 and ds.input_shape == [1, 8, 8] and admin.dataset("digits") == ds
    page = admin.owners("digits", limit=3)
    assert len(page) == 3 and all(o.sample_count > 0 for o in page)
    assert admin.owners("digits", limit=3, after=page[1].owner_id)[0] == page[2]
    (model,) = admin.models()
    assert model.name == "m" and model.status == "ready" and model.latest_version == 1
    (v,) = admin.versions("m")
    assert v.version == 1 and admin.version("m").version == 1 and admin.version("m", 1).kind == v.kind
    out = admin.predict("m", [[0.0] * 64])
    assert out["version"] == 1 and len(out["probabilities"][0]) == 10
    assert admin.artifact("m", 1)[:2] == b"PK"
    assert admin.set_alias("m", "production", 1)["version"] == 1 and admin.aliases("m")[0]["alias"] == "production"


def test_a_deletion_filed_followed_certified_and_audited(ready):
    admin, client = connect(ready, ADMIN), connect(ready, CLIENT)
    owner = admin.owners("digits", limit=1)[0].owner_id
    filed = client.delete(owner, reason="GDPR art. 17", idempotency_key="k-1")
    assert filed.status == "queued" and filed.models == ["m"] and not filed.done
    assert client.delete(owner, reason="GDPR art. 17", idempotency_key="k-1").id == filed.id
    run_worker_inline(ready.app_)
    done = client.wait(filed.id, timeout=5, every=0.1)
    assert done.done and done.status == "completed" and done.outcomes[0].version == 2
    assert [d.id for d in client.deletions()] == [filed.id]
    job = client.job(done.outcomes[0].job_id)
    assert job.status == "completed" and job.shards_done == job.shards_total
    events = list(client.job_events(job.id))
    assert [e.event for e in events] == ["progress", "end"] and events[-1].data == {"status": "completed"}
    claims = client.verify_certificate(client.certificate(filed.id))
    assert claims["request_id"] == filed.id
    other = {"keys": [{**admin.jwks()["keys"][0], "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}
    with pytest.raises(jwt.InvalidSignatureError):
        client.verify_certificate(client.certificate(filed.id), other)
    kinds = [e.kind for e in admin.audit(request_id=filed.id, page_size=2)]  # three pages
    assert kinds[0] == "request.accepted" and "request.completed" in kinds and len(kinds) == 5
    assert admin.verify_audit().ok and admin.owner(owner)["datasets"][0]["remaining_samples"] == 0


def test_errors_carry_the_servers_code_and_ids_are_one_path_segment(ready):
    admin, client = connect(ready, ADMIN), connect(ready, CLIENT)
    with pytest.raises(ApiError) as e:
        admin.model("nope")
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    with pytest.raises(ApiError) as e:
        client.verify_audit()
    assert (e.value.status, e.value.code) == (403, "forbidden")
    with pytest.raises(ApiError) as e:
        client.delete("a/../../v1/audit?x=1")  # percent-encoded: an owner id, not a path
    assert e.value.code == "owner_not_found"
    with pytest.raises(ApiError) as e:
        admin.owner("../datasets")
    assert e.value.code == "owner_not_found"
    with pytest.raises(ApiError) as e:
        Client("http://testserver", None, transport=ready._transport).datasets()
    assert e.value.code == "unauthorized"
    with pytest.raises(ApiError) as e:
        connect(ready, CLIENT2).job("no-such-job")
    assert e.value.status == 404


@pytest.fixture
def remote(ready, monkeypatch):
    """The CLI's remote commands reach the in-process API."""

    class InProcess(Client):
        def __init__(self, url, key=None, **kw):
            super().__init__(url, key, transport=ready._transport)

    monkeypatch.setattr(lethe.client, "Client", InProcess)
    return ready


def cli(tmp_path, capsys, *args) -> tuple[int, str, str]:
    code = main(["--data-dir", str(tmp_path / "cli"), "--url", "http://testserver", "--key", CLIENT, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_cli_files_a_deletion_reads_its_status_and_fetches_its_certificate(remote, tmp_path, capsys):
    owner = connect(remote, ADMIN).owners("digits", limit=1)[0].owner_id
    code, out, err = cli(tmp_path, capsys, "--json", "delete", "--owner", owner, "--reason", "r")
    assert code == 0, err
    rid = json.loads(out)["id"]
    code, out, _ = cli(tmp_path, capsys, "status", rid)
    assert code == 0 and out.splitlines() == [f"request {rid}: queued", "  m: pending (exact)"]
    code, _, err = cli(tmp_path, capsys, "certificate", "get", rid)
    assert code == 2 and "error [request_not_completed]" in err
    run_worker_inline(remote.app_)
    code, out, _ = cli(tmp_path, capsys, "status", rid, "--wait")
    assert code == 0 and f"request {rid}: completed" in out and "m: completed -> v2 (exact)" in out
    code, out, _ = cli(tmp_path, capsys, "certificate", "get", rid, "-o", str(tmp_path / "c.json"))
    assert code == 0 and json.loads((tmp_path / "c.json").read_text())["certificate"].count(".") == 2
    job = connect(remote, CLIENT).deletion(rid).outcomes[0].job_id
    code, out, _ = cli(tmp_path, capsys, "watch", job)
    assert code == 0 and out.strip() == f"job {job}: completed"
    code, _, err = cli(tmp_path, capsys, "status", "no-such-request")
    assert code == 2 and "error [request_not_found]" in err
    code, _, err = cli(tmp_path, capsys, "unlearn", "m", "--owner", owner, "--full")
    assert code == 2 and "local only" in err


def test_follow_feeds_a_remote_jobs_lines_and_shard_states_to_the_progress_callback():
    from app.cli.progress import follow
    from lethe.client import JobEvent

    training = {"shard": 0, "phase": "training", "slice": 0, "slices": 1, "epoch": 1, "epochs": 2,
                "samples_done": 10, "samples_total": 20, "samples_per_s": 5.0}
    events = [JobEvent(event="progress", data={"status": "running", "progress": "shard 0", "shards": [training]}),
              JobEvent(event="progress", data={"status": "running", "progress": "shard 0",
                                               "shards": [{"shard": 0, "phase": "done"}]}),
              JobEvent(event="end", data={"status": "failed"})]
    seen = []
    assert follow(iter(events), lambda msg, state=None: seen.append((msg, state))) == "failed"
    assert seen == [("shard 0", None), (None, training)]


def test_the_cli_retrains_on_the_server_and_follows_the_job(remote, tmp_path, capsys, monkeypatch):
    """``lethe --url U retrain M``: queued through the client, run by the (inline) worker,
    followed to its end."""
    from app.cli import remote_commands

    real = remote_commands.follow

    def follow_after_running(events, progress):  # the worker runs when the job is queued
        run_worker_inline(remote.app_)
        return real(events, progress)

    monkeypatch.setattr(remote_commands, "follow", follow_after_running)
    code, out, err = main_admin(tmp_path, capsys, "retrain", "m")
    assert code == 0, err
    assert out.strip() == "m: retrain completed, version 2"
    v2 = connect(remote, ADMIN).version("m", 2)
    assert v2.parent == 1 and v2.method == "exact"


def main_admin(tmp_path, capsys, *args):
    code = main(["--data-dir", str(tmp_path / "cli"), "--url", "http://testserver", "--key", ADMIN, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_stored_admin_key_goes_only_to_the_default_server(tmp_path):
    """``lethe serve`` keeps its keys in the data directory; the CLI uses the admin key for
    the local default server, never for one --url names."""
    from app.cli.base import Context
    from app.settings import Settings

    data = tmp_path / "d"
    data.mkdir()
    (data / "api-keys.json").write_text(json.dumps({"admin": "adm_local", "client": "cli_local"}))
    settings = Settings(data_dir=data)
    local = Context(settings, False, True).client()
    assert local.url == "http://127.0.0.1:8000" and local._http.headers["authorization"] == "Bearer adm_local"
    remote = Context(settings, False, True, url="https://lethe.example.com").client()
    assert "authorization" not in remote._http.headers
    given = Context(settings, False, True, url="https://lethe.example.com", key="cli_x").client()
    assert given._http.headers["authorization"] == "Bearer cli_x"
