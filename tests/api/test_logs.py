"""Structured logs: the request id follows a deletion from the POST through the outbox,
the tasks and the job flow, and no line carries an owner id or a reason."""
from __future__ import annotations

import json
import logging

import pytest

from app import logs
from tests.service_helpers import C, an_owner, run_worker_inline


@pytest.fixture
def json_lines():
    """Every record of the process, formatted as the service formats them (JSON)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.addFilter(lambda record: record.name != "httpx")  # the test's client, not the service
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_deletion_is_followed_by_its_request_id(ready, json_lines):
    owner = an_owner(ready)
    r = ready.post("/v1/deletion-requests", json={"owner_id": owner, "reason": "my private words"},
                   headers={**C, "X-Request-ID": "trace-abc-1"})
    assert r.status_code == 202 and r.headers["x-request-id"] == "trace-abc-1"
    deletion = r.json()["id"]
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{deletion}", headers=C).json()["status"] == "completed"
    records = [json.loads(line) for line in json_lines]
    http = [x for x in records if x["logger"] == "lethe.http" and x.get("request_id") == "trace-abc-1"]
    assert [x["msg"].split(" ")[:3] for x in http] == [["POST", "/v1/deletion-requests", "202"]]
    followed = [x for x in records if "trace-abc-1" in (x.get("request_ids") or [])]
    assert any(x["msg"].startswith("outbox: sent lethe.advance") for x in followed)
    worker = [x for x in followed if x["logger"] == "lethe.worker"]
    assert worker and all(x["deletion_ids"] == [deletion] and x["job_id"] for x in worker)
    assert any("running shard" in x["msg"] and "shard" in x for x in worker)
    everything = "\n".join(json_lines)
    assert owner not in everything and "private words" not in everything


def test_a_request_id_that_is_not_a_plain_token_is_replaced(client):
    r = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    given = r.headers["x-request-id"]
    assert given != "bad id\twith spaces" and len(given) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "a" * 65}).headers["x-request-id"] != "a" * 65
    assert client.get("/healthz").headers["x-request-id"]  # one is made when none is sent


def test_paths_are_logged_as_route_templates(client, json_lines):
    client.get("/v1/owners/owner-secret-42", headers=C)
    lines = [json.loads(x) for x in json_lines if '"lethe.http"' in x]
    assert lines and lines[-1]["msg"].startswith("GET /v1/owners/{owner_id} ")
    assert "owner-secret-42" not in "\n".join(json_lines)


def test_console_format_and_bad_format():
    record = logging.LogRecord("lethe.worker", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    with logs.bind(job_id="j1", request_ids=["r1"]):
        logs.ContextFilter().filter(record)
    text = logs.ConsoleFormatter().format(record)
    assert text.endswith("INFO lethe.worker [job_id=j1 request_ids=['r1']]: job j1 done")
    assert json.loads(logs.JsonFormatter().format(record))["request_ids"] == ["r1"]
    with pytest.raises(ValueError, match="LETHE_LOG_FORMAT"):
        logs.configure("xml")
