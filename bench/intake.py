"""Intake benchmark: concurrent clients POST deletion requests to uvicorn + PostgreSQL.

Starts ``lethe api`` on a fresh PostgreSQL database (Redis as the broker, no worker,
so only intake is measured), drives it with wrk, then checks that every request that
was answered 202 is in the database. Prints requests/s, p50/p99 latency and the check.

    .venv/bin/python bench/intake.py --duration 20 --connections 64 --api-workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
ADMIN, CLIENT = "bench-admin", "bench-client"

LUA = r"""
owners = {%(owners)s}
counter = 0
ids = {}
tag = ""

function setup(thread)
  thread:set("tag", tostring(math.random(1, 1e9)))
end

function request()
  counter = counter + 1
  local owner = owners[(counter %% #owners) + 1]
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer %(key)s"
  headers["Idempotency-Key"] = "bench-" .. tag .. "-" .. counter
  return wrk.format("POST", "/v1/deletion-requests", headers, '{"owner_id":"' .. owner .. '"}')
end

function response(status, headers, body)
  if status == 202 then
    local id = string.match(body, '"id":"([^"]+)"')
    if id then ids[#ids + 1] = id end
  end
end

function done(summary, latency, requests)
  local f = io.open("%(ids_file)s", "w")
  for _, t in ipairs(threads_list) do
    for _, id in ipairs(t:get("ids")) do f:write(id, "\n") end
  end
  f:close()
  local c = io.open("%(cdf_file)s", "w")  -- the latency distribution (microseconds), for the CDF figure
  for _, p in ipairs({1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.99}) do
    c:write(p, " ", latency:percentile(p), "\n")
  end
  c:write(100, " ", latency.max, "\n")
  c:close()
end

threads_list = {}
local _setup = setup
function setup(thread)
  table.insert(threads_list, thread)
  _setup(thread)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_wrk(out: str) -> dict:
    def ms(text):
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    pct = {p: ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": pct.get("50"),
        "p90_ms": pct.get("90"),
        "p99_ms": pct.get("99"),
        "socket_errors": errors.group(1).strip() if errors else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("LETHE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--redis", default=os.environ.get("LETHE_TEST_BROKER_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="seconds of load before the measured run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "intake.json"))
    p.add_argument("--no-figure", action="store_true", help="do not write docs/figures/intake_latency_cdf.png")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lethe-intake-"))
    db_name = f"lethe_bench_{uuid.uuid4().hex[:8]}"
    db_url = args.pg.rsplit("/", 1)[0] + "/" + db_name
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LETHE_DATA_DIR": str(tmp / "data"), "LETHE_DATABASE_URL": db_url,
           "LETHE_BROKER_URL": args.redis, "LETHE_ADMIN_KEYS": ADMIN, "LETHE_CLIENT_KEYS": CLIENT,
           "LETHE_DEVICE": "cpu"}
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    api = None
    try:
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        api = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers",
                                str(args.api_workers), "--no-access-log"], env=env, cwd=ROOT,
                               stdout=(tmp / "api.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(200):
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        httpx.post(url + "/v1/datasets", json={"name": "digits", "source": "digits"}, headers=admin,
                   timeout=60).raise_for_status()
        httpx.post(url + "/v1/models", headers=admin, timeout=30, json={
            "name": "m", "dataset": "digits", "strategy": {"kind": "sisa", "shards": 4, "slices": 2}}).raise_for_status()
        owners = [o["owner_id"] for o in httpx.get(url + "/v1/datasets/digits/owners?limit=1000",
                                                   headers=admin).json()["owners"]]
        accepted = set()
        for phase, seconds in (("warmup", args.warmup), ("measured", args.duration)):
            if seconds <= 0:
                continue
            ids_file = tmp / f"accepted_ids_{phase}.txt"
            script = tmp / f"post_{phase}.lua"
            cdf_file = tmp / f"latency_{phase}.txt"
            script.write_text(LUA % {"owners": ",".join(f'"{o}"' for o in owners), "key": CLIENT,
                                     "ids_file": str(ids_file), "cdf_file": str(cdf_file)})
            cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
                   "--latency", "--timeout", "10s", "-s", str(script), url]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            accepted |= set(ids_file.read_text().split())
        result = parse_wrk(out)  # the measured phase
        result["latency_cdf_ms"] = {float(p): float(us) / 1000 for p, us in
                                    (line.split() for line in cdf_file.read_text().splitlines())}
        time.sleep(1)
        with psycopg.connect(db_url) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM deletion_requests")}
            audit = conn.execute("SELECT count(*) FROM audit_events WHERE kind = 'request.accepted'").fetchone()[0]
            outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        result.update({
            "accepted_202": len(accepted),
            "accepted_missing_from_db": len(accepted - stored),
            "requests_in_db": len(stored),
            "accepted_audit_events": audit,
            "outbox_rows": outbox,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "api_workers": args.api_workers,
            "cpus": os.cpu_count(),
        })
        print(out)
        print(json.dumps(result, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        if not args.no_figure:
            from figures import latency_cdf

            note = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, {args.api_workers} API processes, "
                    f"{args.connections} connections, {args.duration} s, {result['requests_per_s']:.0f} req/s")
            print("figure:", latency_cdf(result["latency_cdf_ms"], title="Deletion intake latency (wrk)", note=note))
        return 0 if result["accepted_missing_from_db"] == 0 else 1
    finally:
        if api is not None:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(timeout=30)
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
