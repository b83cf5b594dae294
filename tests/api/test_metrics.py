"""GET /metrics: Prometheus text, counted by route template, the service's state read at
scrape time, and never an owner id."""
from __future__ import annotations

import re

from tests.service_helpers import A, C, an_owner, change_settings, run_worker_inline


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample of the exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def counted(before: str, after: str, name: str, **labels) -> float:
    """How much a counter grew between two scrapes (counters are per process, and other
    tests in this process counted too)."""
    return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)


def test_metrics_count_requests_by_route_template_and_read_the_state(ready):
    start = ready.get("/metrics").text
    owner = an_owner(ready)
    r = ready.post("/v1/deletion-requests", json={"owner_id": owner, "reason": "private words"}, headers=C)
    rid = r.json()["id"]
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).status_code == 200
    before = ready.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    text = before.text
    assert sample(text, "lethe_deletion_requests", status="queued") == 1
    assert sample(text, "lethe_deletion_requests", status="completed") == 0
    assert sample(text, "lethe_deletion_requests_overdue") == 0
    assert counted(start, text, "lethe_http_requests_total", route="/v1/deletion-requests", method="POST",
                   status="202") == 1
    assert counted(start, text, "lethe_http_requests_total", route="/v1/deletion-requests/{request_id}",
                   method="GET", status="200") == 1
    assert counted(start, text, "lethe_http_request_duration_seconds_count", route="/v1/deletion-requests",
                   method="POST") == 1
    assert sample(text, "lethe_database_up") == 1 and sample(text, "lethe_store_live_bytes") > 0
    assert sample(text, "lethe_audit_chain_length") > 0
    assert owner not in text and rid not in text and "private words" not in text  # templates, not paths

    run_worker_inline(ready.app_)
    after = ready.get("/metrics").text
    assert sample(after, "lethe_deletion_requests", status="completed") == 1
    assert sample(after, "lethe_deletion_requests", status="queued") == 0
    assert sample(after, "lethe_outbox_backlog") == 0
    assert sample(after, "lethe_jobs", kind="unlearn", status="completed") == 1
    assert counted(text, after, "lethe_job_duration_seconds_count", kind="unlearn", method="exact") == 1
    assert counted(text, after, "lethe_shard_train_seconds_count", kind="unlearn") >= 1


def test_unknown_paths_are_counted_under_one_label(client):
    start = client.get("/metrics").text
    client.get("/no/such/owner-123")
    text = client.get("/metrics").text
    assert counted(start, text, "lethe_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert "owner-123" not in text


def test_metrics_keys_close_the_endpoint(client):
    change_settings(client, metrics_keys=["scrape-key"])
    r = client.get("/metrics")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers=A).status_code == 401  # an admin key is not a metrics key
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-key"}).status_code == 200


def test_gate_verdicts_are_counted_by_method(ready):
    start = ready.get("/metrics").text
    change_settings(ready, gate_ua_tolerance=-1.0, gate_mia_tolerance=-1.0, gate_max_ta_drop=-1.0)
    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "method": "ssd"}, headers=C)
    run_worker_inline(ready.app_)
    text = ready.get("/metrics").text
    assert counted(start, text, "lethe_gate_checks_total", method="ssd", result="fail") == 1
    assert counted(start, text, "lethe_gate_checks_total", method="ssd", result="pass") == 0
    # the fallback retrained exactly and published: one job, timed under its published method
    assert counted(start, text, "lethe_job_duration_seconds_count", kind="unlearn", method="exact") == 1
