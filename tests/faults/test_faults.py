"""The fault suite: the real stack (uvicorn, a Celery worker process, PostgreSQL, a Redis
of its own) driven through crashes, outages and hostile input. After each fault, the
same invariants must hold:

- every accepted request reaches ``completed`` (these faults are all transient, so
  none may end ``failed``);
- no job published more than one version, and the store and the database agree;
- no live (unrevoked) version was trained on an erased sample;
- the audit chain verifies.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psycopg
import pytest

from tests.faults.conftest import unique_id
from tests.integration.conftest import poll
from tests.service_helpers import A, C, C2
from workers.engine.engine import Engine

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture(scope="module")
def owners(http, model):
    every = [o["owner_id"] for o in http.get("/v1/datasets/digits/owners?limit=1000", headers=A).json()["owners"]]
    return iter(every[5:])  # each test takes fresh owners


def _post(http, owner: str, headers=C, **body) -> httpx.Response:
    return http.post("/v1/deletion-requests", json={"owner_id": owner, **body}, headers=headers)


def settle_and_check(stack, http, accepted: list[str], timeout: float = 300) -> None:
    """Wait for every accepted request to end, then check the invariants."""
    assert accepted

    def states():
        rows = http.get("/v1/deletion-requests?limit=500", headers=A).json()
        return {r["id"]: r for r in rows if r["id"] in set(accepted)}

    try:
        done = poll(states, lambda rs: len(rs) == len(set(accepted))
                    and all(r["status"] in ("completed", "failed") for r in rs.values()), timeout=timeout, every=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnosis(stack)}") from None
    failed = {i: r["failure_reason"] for i, r in done.items() if r["status"] != "completed"}
    assert not failed, f"accepted requests failed: {failed}"

    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        twice = conn.execute("SELECT job_id, count(*) FROM model_versions WHERE job_id IS NOT NULL "
                             "GROUP BY job_id HAVING count(*) > 1").fetchall()
        assert not twice, f"jobs that published more than one version: {twice}"
        live = conn.execute("SELECT model, version FROM model_versions WHERE revoked_at IS NULL").fetchall()
        recorded = conn.execute("SELECT model, version FROM model_versions").fetchall()
    engine = Engine(stack.env["LETHE_DATA_DIR"], device="cpu")
    in_store = {(m, v) for m in {m for m, _ in recorded} for v in engine.store.version_numbers(m)}
    assert in_store == set(recorded), "the store and the database disagree on the published versions"
    erasures = engine.dataset("digits").erasures()
    erased = np.concatenate([np.asarray(e.sample_ids, np.int64) for e in erasures]) if erasures else np.zeros(0)
    for m, v in live:
        manifest = np.concatenate([np.concatenate(s) for s in engine.slice_ids(engine.version(m, v))])
        assert not np.isin(erased, manifest).any(), f"{m} v{v} is live and was trained on erased samples"
    report = http.get("/v1/audit/verify", headers=A).json()
    assert report["ok"] is True, report


def _diagnosis(stack) -> str:
    """What a stuck run leaves to read: the jobs, the dataset lease, the unfinished
    outcomes, and the ends of the worker's and the API's logs."""
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        jobs = conn.execute("SELECT id, kind, status, plan IS NOT NULL, error, created_at, heartbeat_at, finished_at "
                            "FROM jobs ORDER BY created_at DESC LIMIT 8").fetchall()
        lease = conn.execute("SELECT name, busy_job, busy_until, now() FROM datasets").fetchall()
        open_ = conn.execute("SELECT request_id, status, job_id, retry_at, attempts, transient_failures, error "
                             "FROM deletion_outcomes WHERE status NOT IN ('completed', 'failed')").fetchall()
    api = (stack.tmp / "api.log").read_text() if (stack.tmp / "api.log").exists() else ""
    return (f"jobs: {jobs}\nlease: {lease}\nunfinished outcomes: {open_}\n"
            f"worker log (end):\n{stack.worker_log()[-6000:]}\napi log (end):\n{api[-3000:]}")


def test_worker_killed_at_random_moments_mid_shard_and_mid_publish(stack, http, owners):
    accepted = []
    rng = random.Random(7)
    for round_ in range(4):
        for _ in range(2):
            r = _post(http, next(owners))
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        # The job is somewhere between claiming, training a shard, measuring and
        # publishing when the worker and its pool die.
        time.sleep(rng.uniform(0.5, 3.0))
        stack.kill_worker()
        stack.start_worker()
    settle_and_check(stack, http, accepted)


def test_redis_stopped_and_flushed_during_intake(stack, http, owners):
    people = [next(owners) for _ in range(24)]
    accepted, lock = [], threading.Lock()

    def send(owner):
        r = _post(http, owner)
        if r.status_code == 202:
            with lock:
                accepted.append(r.json()["id"])
        return r.status_code

    with ThreadPoolExecutor(6) as pool:
        first = list(pool.map(send, people[:8]))
        stack.redis.stop()  # the broker is gone: intake still commits, the outbox holds the work
        down = list(pool.map(send, people[8:16]))
        time.sleep(2)
        stack.redis.start()
        stack.redis.flushall()  # and what it held is lost: the reconciler finds the work again
        last = list(pool.map(send, people[16:]))
        time.sleep(1)
        stack.redis.flushall()
    assert set(first + down + last) == {202}, (first, down, last)
    settle_and_check(stack, http, accepted)


def test_postgres_connections_terminated_repeatedly_mid_job(stack, http, owners):
    accepted = []
    for _ in range(6):
        r = _post(http, next(owners))
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
    terminated = 0
    for _ in range(14):  # every 0.5 s for 7 s, while the jobs run
        terminated += stack.terminate_db_connections()
        time.sleep(0.5)
    assert terminated > 0
    settle_and_check(stack, http, accepted)


def test_api_killed_mid_batch(stack, http, owners):
    people = [next(owners) for _ in range(40)]
    accepted, lock = [], threading.Lock()

    def send(owner):
        try:
            r = httpx.post(f"{stack.url}/v1/deletion-requests", json={"owner_id": owner}, headers=C, timeout=30)
        except httpx.HTTPError:
            return None  # never answered: the caller does not know, and retries with its key in practice
        if r.status_code == 202:
            with lock:
                accepted.append(r.json()["id"])
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, p) for p in people]
        while len(accepted) < 10:
            time.sleep(0.02)
        stack.kill_api()
        [f.result() for f in futures]
    stack.start_api()
    for rid in accepted:  # an answered 202 is in the database, whatever happened after
        assert http.get(f"/v1/deletion-requests/{rid}", headers=C).status_code == 200
    settle_and_check(stack, http, accepted)


def test_a_nul_poisoned_batch_fails_only_its_sender(stack, http, owners):
    good = [next(owners) for _ in range(60)]
    poisoned = [next(owners) for _ in range(10)]
    jobs = [(o, C, {}) for o in good] + [(o, C2, {"reason": "hi\u0000there"}) for o in poisoned]
    random.Random(3).shuffle(jobs)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda j: (j[1] is C, _post(http, j[0], j[1], **j[2])), jobs))
    mine = [r for is_good, r in answers if is_good]
    theirs = [r for is_good, r in answers if not is_good]
    assert [r.status_code for r in mine] == [202] * 60, {r.status_code for r in mine}
    assert all(r.status_code == 422 and r.json()["code"] == "invalid_request" for r in theirs)
    settle_and_check(stack, http, [r.json()["id"] for r in mine])


def test_a_row_the_database_refuses_in_a_group_fails_only_its_sender(stack, http, owners):
    """Past validation, PostgreSQL itself refuses one caller's rows (a trigger raises a
    data exception for them) while they are committed in groups with another caller's:
    each group falls back to one transaction per request, so only the refused ones fail
    (422), and every other request is accepted once."""
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute("""CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN
                          IF NEW.reason = 'refused-by-the-database' THEN
                            RAISE EXCEPTION 'refused' USING ERRCODE = '22023';
                          END IF; RETURN NEW; END $$ LANGUAGE plpgsql""")
        conn.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON deletion_requests "
                     "FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
    try:
        good = [next(owners) for _ in range(60)]
        poisoned = [next(owners) for _ in range(10)]
        jobs = [(o, C, {}) for o in good] + [(o, C2, {"reason": "refused-by-the-database"}) for o in poisoned]
        random.Random(5).shuffle(jobs)
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda j: (j[1] is C, _post(http, j[0], j[1], **j[2])), jobs))
    finally:
        with psycopg.connect(stack.db_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_poison ON deletion_requests")
    mine = [r for is_good, r in answers if is_good]
    theirs = [r for is_good, r in answers if not is_good]
    assert [r.status_code for r in mine] == [202] * 60, {r.status_code for r in mine}
    assert all(r.status_code == 422 and r.json()["code"] == "invalid_request" for r in theirs), \
        {r.status_code for r in theirs}
    ids = [r.json()["id"] for r in mine]
    assert len(set(ids)) == 60
    assert "accepting them one by one" in (stack.tmp / "api.log").read_text()  # groups did fall back
    with psycopg.connect(stack.db_url) as conn:
        assert conn.execute("SELECT count(*) FROM deletion_requests WHERE id = ANY(%s)", (ids,)).fetchone()[0] == 60
    settle_and_check(stack, http, ids)


def test_a_huge_predict_beside_health_checks(stack, http, model):
    """A 300 MB chunked predict (no Content-Length to refuse it by) is answered 413 once it
    passes predict's own bound (about 2 MB here), long before it is all sent or reaches
    ``max_upload_bytes`` (200 MB); /healthz stays fast all the while."""
    import select
    import socket

    answered, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            started = time.perf_counter()
            code = httpx.get(f"{stack.url}/healthz", timeout=30).status_code
            answered.append((code, time.perf_counter() - started))
            time.sleep(0.05)

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    total, block = 300 * 1024 * 1024, (b"[" + b",".join([b"1.0"] * 64) + b"],") * 1000
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    watcher = threading.Thread(target=probe)
    watcher.start()
    sent, reply = 0, b""
    try:
        deadline = time.perf_counter() + 30
        while not answered and time.perf_counter() < deadline:  # health answers before it starts, too
            time.sleep(0.01)
        assert answered, "/healthz did not answer"
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST /v1/models/{model}/versions/latest/predict HTTP/1.1\r\nHost: {host}\r\n"
                         f"Authorization: {C['Authorization']}\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode() + chunk(b'{"inputs": ['))
            sock.setblocking(False)
            pending, last = memoryview(b""), False
            while time.perf_counter() - started < 60:  # send until the server answers
                if not pending and sent < total:
                    pending = memoryview(chunk(block))
                elif not pending and not last:
                    pending, last = memoryview(chunk(b"[0]]}") + b"0\r\n\r\n"), True
                readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1)
                if readable:
                    break
                if not writable:
                    continue
                try:
                    n = sock.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # the server answered and closed while we were still sending
                    break
                pending, sent = pending[n:], sent + n
            answered_after = time.perf_counter() - started
            sock.settimeout(10)
            try:
                while b"payload_too_large" not in reply:
                    data = sock.recv(65536)
                    if not data:
                        break
                    reply += data
            except OSError:  # a reset after the answer: what arrived before it is kept
                pass
        time.sleep(0.5)  # and health keeps answering once the huge request is dropped
    finally:
        stop.set()
        watcher.join()
    print(f"huge predict: answered after {sent / 2**20:.1f} MiB sent, in {answered_after:.2f} s; healthz: "
          f"{len(answered)} probes, slowest {max(s for _, s in answered):.3f} s")
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply, reply[:300]
    assert sent < 32 * 2**20, f"the answer came only after {sent} bytes: predict's own bound did not apply"
    assert answered_after < 10
    assert all(code == 200 for code, _ in answered), answered
    assert max(s for _, s in answered) < 1.0, f"/healthz was slow during the huge predict: {answered}"


def test_a_hundred_posts_with_one_idempotency_key_make_one_request(stack, http, owners):
    owner, key = next(owners), f"fault-{unique_id()}"
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: http.post("/v1/deletion-requests", json={"owner_id": owner},
                                                    headers={**C, "Idempotency-Key": key}), range(100)))
    assert {r.status_code for r in answers} <= {200, 202}
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    assert len([r for r in http.get(f"/v1/deletion-requests?owner_id={owner}", headers=A).json()]) == 1
    settle_and_check(stack, http, list(ids))


def test_a_tail_cut_from_the_audit_chain_is_reported(stack, http, model):
    anchored = poll(lambda: http.get("/v1/audit/verify", headers=A).json(),
                    lambda r: r["ok"] and r["anchored_seq"] == r["events"], timeout=30)
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        try:
            cut = conn.execute("DELETE FROM audit_events WHERE seq > %s RETURNING *",
                               (anchored["events"] - 3,)).fetchall()
            report = http.get("/v1/audit/verify", headers=A).json()
            assert report["ok"] is False and report["truncated"] is True, report
            verified = stack.run("audit", "verify")
            assert verified.returncode == 1 and "truncated" in verified.stdout
            columns = [d.name for d in conn.execute("SELECT * FROM audit_events LIMIT 0").description]
            for row in cut:  # put back, so the suite's later checks start from a whole chain
                conn.execute(f"INSERT INTO audit_events ({', '.join(columns)}) "
                             f"VALUES ({', '.join(['%s'] * len(columns))})", row)
        finally:
            conn.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
    assert http.get("/v1/audit/verify", headers=A).json()["ok"] is True


@pytest.mark.parametrize("role", ["admin", "client"])
def test_schemathesis_over_the_whole_schema_finds_no_server_error(stack, http, model, role):
    """Every operation of the live server's OpenAPI schema, valid and invalid inputs,
    with each role's key: no 5xx, and every 4xx carries a ``code``."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    headers = A if role == "admin" else C
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    checked, errors, calls = [], [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=headers, timeout=60)
            calls.append(response.status_code)
            where = f"{case.method} {case.formatted_path}"
            if response.status_code >= 500:
                errors.append(f"{where}: {response.status_code} {response.text[:200]}")
            elif _not_http(response):
                pass  # uvicorn refused bytes that are not an HTTP request; the app never saw them
            elif response.status_code >= 400 and "code" not in _json_or_empty(response):
                errors.append(f"{where}: a {response.status_code} without a code: {response.text[:200]}")

        check()
        checked.append(f"{operation.method.upper()} {operation.path}")
    print(f"schemathesis ({role}): {len(checked)} operations, {len(calls)} calls")
    assert not errors, errors[:5]
    assert "POST /v1/deletion-requests" in checked and "POST /v1/datasets" in checked and len(checked) >= 20


def test_concurrent_creates_of_one_model_name_give_one_model_and_409s(stack, http, model):
    name = f"race-{unique_id()}"
    body = {"name": name, "dataset": "digits", "architecture": "mlp",
            "strategy": {"kind": "sisa", "shards": 2, "slices": 1}, "training": {"epochs": 1, "batch_size": 64}}
    with ThreadPoolExecutor(6) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: http.post("/v1/models", json=body, headers=A),
                                                        range(6)))
    assert codes == [202] + [409] * 5, codes


def _not_http(response) -> bool:
    """uvicorn's own answer to a request line or header it cannot parse (a generated path
    or header with bytes HTTP does not allow): plain text, before any application code."""
    return response.status_code == 400 and response.text.strip() == "Invalid HTTP request received."


def _json_or_empty(response) -> dict:
    """The response's JSON object; {} for a body that is not one (reported as lacking a code)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
