"""Soak: deletion requests at a steady rate from many clients while workers die and the
database drops its connections — what was accepted, completed, failed and lost.

It starts the fault suite's stack (``tests/faults/conftest.py``: a fresh PostgreSQL
database, a Redis of its own, ``lethe worker`` and ``lethe api`` processes; the API and
the worker connect as the ``lethe_app`` role), imports a dataset with many owners and
trains a small SISA model, then for ``--minutes`` sends ``--requests`` deletion
requests at an even rate from ``--clients`` threads (each request a different owner),
SIGKILLs the worker (with its pool) every ``--kill-every`` seconds and starts another,
and terminates every database connection ``--pg-terminations`` times. After the load
it waits (at most ``--drain-minutes``) for every accepted request to end, and counts.

    .venv/bin/python bench/soak.py --requests 10000 --minutes 10 --clients 32
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.conftest import FaultStack  # noqa: E402
from tests.integration.conftest import poll  # noqa: E402
from tests.service_helpers import A, C  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--kill-every", type=float, default=60, help="seconds between worker SIGKILLs")
    p.add_argument("--pg-terminations", type=int, default=2)
    p.add_argument("--drain-minutes", type=float, default=15)
    p.add_argument("--source", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    args = p.parse_args()

    stack = FaultStack(Path(tempfile.mkdtemp(prefix="lethe-soak-")))
    try:
        stack.up()
        http = httpx.Client(base_url=stack.url, timeout=60)
        owners_wanted = args.requests + 100
        r = http.post("/v1/datasets", headers=A, json={"name": "soak", "source": args.source, "owners": owners_wanted})
        assert r.status_code == 201, r.text
        r = http.post("/v1/models", headers=A, json={
            "name": "soak-sisa", "dataset": "soak", "architecture": "mlp",
            "strategy": {"kind": "sisa", "shards": 4, "slices": 1}, "training": {"epochs": 1, "batch_size": 256}})
        assert r.status_code == 202, r.text
        started = time.time()
        model = poll(lambda: http.get("/v1/models/soak-sisa", headers=A).json(),
                     lambda m: m["status"] in ("ready", "failed"), timeout=1800, every=2)
        assert model["status"] == "ready", model
        trained_s = time.time() - started
        owners, after = [], None
        while len(owners) < args.requests:
            page = http.get("/v1/datasets/soak/owners", headers=A, params={"limit": 1000, **({"after": after} if after else {})}).json()
            owners += [o["owner_id"] for o in page["owners"]]
            after = page.get("next_cursor")
            if not after:
                break
        owners = owners[:args.requests]
        print(f"model ready in {trained_s:.0f} s; sending {len(owners)} requests over {args.minutes} min", flush=True)

        accepted, refused, errors, latencies, lock = [], [], [], [], threading.Lock()
        interval = args.minutes * 60 / len(owners)
        t0 = time.monotonic()
        local = threading.local()

        def send(i_owner):
            i, owner = i_owner
            wait = t0 + i * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            client = getattr(local, "client", None) or httpx.Client(base_url=stack.url, timeout=60)
            local.client = client
            began = time.perf_counter()
            try:
                r = client.post("/v1/deletion-requests", json={"owner_id": owner},
                                headers={**C, "Idempotency-Key": f"soak-{i}"})
            except httpx.HTTPError as exc:
                with lock:
                    errors.append(type(exc).__name__)
                return
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                (accepted if r.status_code in (200, 202) else refused).append(
                    r.json().get("id") if r.status_code in (200, 202) else f"{r.status_code} {r.text[:100]}")

        faults, stop = [], threading.Event()

        def chaos():
            duration = args.minutes * 60
            terminations = [duration * (k + 1) / (args.pg_terminations + 1) + 7 for k in range(args.pg_terminations)]
            next_kill = args.kill_every
            while not stop.is_set():
                elapsed = time.monotonic() - t0
                if elapsed >= duration:
                    return
                if terminations and elapsed >= terminations[0]:
                    terminations.pop(0)
                    faults.append((round(elapsed), "pg_terminate", stack.terminate_db_connections()))
                if elapsed >= next_kill:
                    next_kill += args.kill_every
                    stack.kill_worker()
                    stack.start_worker()
                    faults.append((round(elapsed), "worker_sigkill", 1))
                time.sleep(0.5)

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(send, enumerate(owners)))
        load_s = time.monotonic() - t0
        stop.set()
        chaos_thread.join()
        print(f"load done in {load_s:.0f} s: {len(accepted)} accepted, {len(refused)} refused, "
              f"{len(errors)} unanswered; faults {faults}", flush=True)

        ids = set(accepted)
        drain_started = time.monotonic()
        deadline = drain_started + args.drain_minutes * 60
        with psycopg.connect(stack.db_url, autocommit=True) as conn:
            while True:
                rows = conn.execute("SELECT status, count(*) FROM deletion_requests GROUP BY status").fetchall()
                counts = dict(rows)
                if counts.get("queued", 0) + counts.get("running", 0) == 0 or time.monotonic() > deadline:
                    break
                time.sleep(5)
            drain_s = time.monotonic() - drain_started
            found = {row[0]: row[1:] for row in conn.execute(
                "SELECT id, status, created_at, completed_at, failure_reason FROM deletion_requests")}
            twice = conn.execute("SELECT count(*) FROM (SELECT job_id FROM model_versions WHERE job_id IS NOT NULL "
                                 "GROUP BY job_id HAVING count(*) > 1) t").fetchone()[0]
            versions = conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
        lost = [i for i in ids if i not in found]
        statuses = [found[i][0] for i in ids if i in found]
        spans = [(found[i][2] - found[i][1]).total_seconds() for i in ids
                 if i in found and found[i][2] is not None]
        latencies.sort()
        result = {
            "date": datetime.now().date().isoformat(),
            "requests": len(owners), "minutes": args.minutes, "clients": args.clients, "source": args.source,
            "model_trained_s": round(trained_s), "load_s": round(load_s), "drain_s": round(drain_s),
            "accepted": len(ids), "refused": len(refused), "unanswered": len(errors),
            "completed": statuses.count("completed"), "failed": statuses.count("failed"),
            "still_open": len(statuses) - statuses.count("completed") - statuses.count("failed"),
            "lost": len(lost), "duplicate_versions": twice, "versions_published": versions,
            "intake_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "intake_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
            "intake_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
            "longest_acceptance_to_end_s": round(max(spans), 1) if spans else None,
            "faults": faults,
            "failure_reasons": sorted({found[i][3] for i in ids if i in found and found[i][0] == "failed"})[:5],
            "refusals": sorted(set(refused))[:5],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0 if not lost and not twice else 1
    finally:
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
