"""Time from a deletion request to its published version, on the embedded default.

Starts ``lethe serve`` on a fresh data directory (SQLite, kombu's SQLAlchemy broker, one
worker; it imports digits and trains the demo SISA model: small CNN, 4 shards x 2
slices, 20 epochs), then sends deletion requests one at a time for different owners and
times each from the POST to ``completed``.

    .venv/bin/python bench/time_to_version.py --requests 15
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, timeout, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("timed out")


@contextmanager
def lethe_serve(prefix: str, *options: str):
    """``lethe serve`` on a fresh data directory and a free port, without the caller's
    LETHE_* settings: yields (url, admin headers, client headers, data dir) once its keys
    are written, and stops it (its whole process group) afterwards."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    serve = subprocess.Popen([sys.executable, "-m", "app.cli", "--data-dir", str(data), "serve", "--port", str(port),
                              *options], env=env, cwd=ROOT, stdout=(data / "serve.log").open("w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        keys = wait_for(lambda: (data / "api-keys.json").exists() and json.loads((data / "api-keys.json").read_text()), 60)
        yield (f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {keys['admin']}"},
               {"Authorization": f"Bearer {keys['client']}"}, data)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=15)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "time_to_version.json"))
    args = p.parse_args()
    with lethe_serve("lethe-ttv-") as (url, admin, client, _):

        def model_ready():
            try:
                return httpx.get(f"{url}/v1/models/digits-sisa", headers=admin).json().get("status") == "ready"
            except httpx.HTTPError:
                return False

        started = time.time()
        wait_for(model_ready, 600, every=0.5)
        train_s = time.time() - started
        owners = [o["owner_id"] for o in httpx.get(f"{url}/v1/datasets/digits/owners?limit=1000", headers=admin).json()["owners"]]
        times, retrained = [], []
        for owner in owners[: args.requests]:
            t0 = time.perf_counter()
            rid = httpx.post(f"{url}/v1/deletion-requests", json={"owner_id": owner}, headers=client).json()["id"]
            done = wait_for(lambda: (r := httpx.get(f"{url}/v1/deletion-requests/{rid}", headers=client).json())
                            ["status"] in ("completed", "failed") and r, 120)
            times.append(time.perf_counter() - t0)
            assert done["status"] == "completed", done
            retrained.append(len(done["outcomes"][0]["metrics"].get("retrained_shards", [])))
        result = {
            "requests": len(times),
            "p50_s": round(statistics.median(times), 3),
            "p90_s": round(sorted(times)[int(0.9 * (len(times) - 1))], 3),
            "max_s": round(max(times), 3),
            "mean_s": round(statistics.mean(times), 3),
            "shards_retrained_per_request": sorted(set(retrained)),
            "first_training_to_ready_s": round(train_s, 1),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        return 0


if __name__ == "__main__":
    sys.exit(main())
