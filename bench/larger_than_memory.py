"""Larger than memory: a synthetic table of --gigabytes (CSV) imported, trained as SISA and
one owner forgotten, by processes held to --memory-mb by a memory cgroup.

    sudo .venv/bin/python bench/larger_than_memory.py            # --gigabytes 2 --memory-mb 512

Each step is a ``lethe`` command (the engine the workers run) started inside a cgroup-v1
memory group (``/sys/fs/cgroup/memory/lethe-ltm-<pid>``, ``memory.limit_in_bytes``; swap
limited too where the kernel accounts it), so the group's peak
(``memory.max_usage_in_bytes``, which counts the page cache of the files read and the
memory-mapped chunks too, so it reaches the limit whenever there is more to cache), the
group's anonymous memory at its highest (``rss`` in ``memory.stat``, sampled every 50 ms:
what the page cache cannot give back), the process's own peak resident set (``/usr/bin/time``'s maximum RSS) and whether the kernel had to kill anything (``memory.oom_control``) are
read from the kernel, not estimated. ``ulimit -v`` would not do: the CUDA build of torch
maps gigabytes of address space it never touches.

The table: an owner column (100,000 people), 24 numeric features, two categorical ones
and a 0/1 label that depends on them; about 280 bytes a CSV line, so 2 GB is about 7.7
million rows, and its float32 inputs (37 after one-hot encoding) take about 1.1 GB in
the ledger's chunks: more than the limit, so training reads them batch by batch
(``LETHE_MAX_DEVICE_DATA_BYTES`` is set to 256 MiB to make sure of it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def write_table(path: Path, gigabytes: float, seed: int = 0) -> int:
    """Write the synthetic CSV in blocks; return its rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    target = int(gigabytes * 1e9)
    rows = 0
    w = rng.normal(size=24)
    with pacsv.CSVWriter(str(path), schema=_schema()) as writer:
        while path.stat().st_size < target:
            n = 200_000
            x = np.round(rng.normal(size=(n, 24)), 6)
            region = rng.integers(0, 10, n)
            plan = rng.integers(0, 3, n)
            score = x @ w + 0.5 * (plan == 2) - 0.3 * (region < 3)
            columns = {
                "owner": pa.array([f"person-{i:06d}" for i in rng.integers(0, 100_000, n)]),
                **{f"f{j:02d}": pa.array(x[:, j]) for j in range(24)},
                "region": pa.array([f"region-{r}" for r in region]),
                "plan": pa.array(np.array(["basic", "plus", "pro"])[plan]),
                "label": pa.array((score > 0).astype(np.int64)),
            }
            writer.write_table(pa.table(columns, schema=_schema()))
            rows += n
    return rows


def _schema():
    import pyarrow as pa

    return pa.schema([("owner", pa.string()), *[(f"f{j:02d}", pa.float64()) for j in range(24)],
                      ("region", pa.string()), ("plan", pa.string()), ("label", pa.int64())])


class MemoryGroup:
    """A cgroup-v1 memory group with a hard limit; processes join it as they start."""

    def __init__(self, limit_bytes: int):
        self.path = CGROUP_ROOT / f"lethe-ltm-{os.getpid()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))

    def join(self) -> None:  # preexec_fn: runs in the child before exec
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def anon_bytes(self) -> int:
        """The group's anonymous memory now (``rss`` in memory.stat: no page cache)."""
        for line in self.read("memory.stat").splitlines():
            key, value = line.split()
            if key == "rss":
                return int(value)
        return 0

    def reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def run_step(group: MemoryGroup, name: str, argv: list[str], env: dict) -> dict:
    group.reset_peak()
    failcnt = int(group.read("memory.failcnt"))
    rss_file = Path(tempfile.gettempdir()) / (group.path.name + ".rss")
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv], env=env,
                            preexec_fn=group.join, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon_peak = 0
    with ThreadPoolExecutor(1) as pool:
        output = pool.submit(proc.communicate)
        while not output.done():  # the group's anonymous memory, sampled: what page cache cannot give back
            anon_peak = max(anon_peak, group.anon_bytes())
            time.sleep(0.05)
        stdout, stderr = output.result()
    seconds = time.perf_counter() - started
    try:
        max_rss = int(rss_file.read_text().split()[-1]) // 1024
    except (OSError, ValueError, IndexError):
        max_rss = None
    rss_file.unlink(missing_ok=True)
    oom = dict(line.split() for line in group.read("memory.oom_control").splitlines())
    step = {"step": name, "exit": proc.returncode, "seconds": round(seconds, 1),
            "peak_mib": round(int(group.read("memory.max_usage_in_bytes")) / 2**20), "max_rss_mib": max_rss,
            "anon_peak_mib": round(anon_peak / 2**20),
            "limit_hits": int(group.read("memory.failcnt")) - failcnt, "oom_kills": int(oom.get("oom_kill", 0)),
            "output": stdout.strip().splitlines()[-3:], "error": stderr.strip().splitlines()[-5:]}
    print(json.dumps(step), flush=True)
    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--memory-mb", type=int, default=512)
    p.add_argument("--workdir", default="/tmp/lethe-ltm")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--out", default="bench/out/larger_than_memory.json")
    p.add_argument("--only-unlearn", metavar="OWNER", default=None,
                   help="keep the data directory of an earlier run and only forget OWNER (another one each time)")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"synthetic-{args.gigabytes:g}gb.csv"
    if not table.exists():
        t = time.perf_counter()
        rows = write_table(table.with_suffix(".tmp"), args.gigabytes)
        table.with_suffix(".tmp").rename(table)
        print(f"wrote {table} ({table.stat().st_size / 1e9:.2f} GB, {rows} rows) in {time.perf_counter() - t:.0f} s",
              flush=True)
    data = work / "data"
    if not args.only_unlearn:
        subprocess.run(["rm", "-rf", str(data)], check=True)
    lethe = [sys.executable, "-m", "app.cli", "--data-dir", str(data), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LETHE_MAX_DEVICE_DATA_BYTES": str(256 << 20),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    group = MemoryGroup(args.memory_mb << 20)
    steps = []
    try:
        if args.only_unlearn:
            steps.append(run_step(group, "unlearn", lethe + [
                "unlearn", "big-mlp", "--owner", args.only_unlearn, "--request", f"ltm-{args.only_unlearn}"], env))
            return _report(args, table, data, steps, expected=1)
        steps.append(run_step(group, "import", lethe + [
            "import", "big", "--source", "table", "--path", str(table),
            "--option", "label_column=label", "--option", "owner_column=owner"], env))
        if steps[-1]["exit"] == 0:
            steps.append(run_step(group, "train", lethe + [
                "train", "big-mlp", "--dataset", "big", "--arch", "mlp", "--strategy", "sisa",
                "--shards", str(args.shards), "--slices", "1", "--epochs", str(args.epochs),
                "--batch-size", str(args.batch_size), "--lr", "0.001"], env))
        if steps[-1]["exit"] == 0:
            steps.append(run_step(group, "unlearn", lethe + [
                "unlearn", "big-mlp", "--owner", "person-000042", "--request", "ltm-1"], env))
    finally:
        group.remove()
    return _report(args, table, data, steps, expected=3)


def _report(args, table: Path, data: Path, steps: list[dict], *, expected: int) -> int:
    chunks = sum(f.stat().st_size for f in (data / "datasets" / "big" / "chunks").glob("*/x.npy")) \
        if (data / "datasets" / "big").exists() else 0
    result = {"date": datetime.now(timezone.utc).isoformat(), "table_bytes": table.stat().st_size,
              "chunk_x_bytes": chunks, "memory_limit_mib": args.memory_mb, "args": vars(args), "steps": steps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"table {table.stat().st_size / 1e9:.2f} GB, rows in chunks {chunks / 2**30:.2f} GiB, limit "
          f"{args.memory_mb} MiB")
    for s in steps:
        print(f"  {s['step']:8s} exit {s['exit']}  {s['seconds']:7.1f} s  group peak {s['peak_mib']} MiB "
              f"(page cache included)  anonymous peak {s.get('anon_peak_mib')} MiB  process max RSS {s['max_rss_mib']} MiB  "
              f"limit hits {s['limit_hits']}  oom kills {s['oom_kills']}")
    return 0 if all(s["exit"] == 0 for s in steps) and len(steps) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
