"""``method: auto`` end to end: what it publishes, how long a request takes, and how far
its version is from an exact one, on Fashion-MNIST (or digits) through the real service.

    .venv/bin/python bench/auto_policy.py [--dataset fashion-mnist|digits] [--owners 3] [--share 0.1] [--epochs 5]

Starts ``lethe serve`` on a fresh data directory (SQLite, one worker, default gate),
imports Fashion-MNIST twice with the same seed (the same owners; a deletion erases rows
dataset-wide, so each method gets its own copy) and trains the same monolithic CNN on
each. Then, for single random owners and for a batch of the largest owners holding at
least ``--share`` of the rows (one job), all of them owners the models trained on (a
one-shard model keeps some owners out of training, ``strategy.holdout``), it sends the same deletions with ``method:
auto`` to one model and ``method: exact`` to the other, and reports the time from POST
to ``completed``, the method auto published (and what it tried first), and the gap of
auto's version to the exact one (UA, RA, TA, MIA-efficacy, percentage points), beside
doing nothing's (the parent, measured by the first attempt on the same rows) and the
gate's estimates of both, which it makes without the exact version.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_version import ROOT, lethe_serve, wait_for  # noqa: E402

GAP_KEYS = ("ua", "ra", "ta", "mia_efficacy")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--owners", type=int, default=3, help="single-owner deletions")
    p.add_argument("--share", type=float, default=0.1, help="the batch: largest owners until this share of rows")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    p.add_argument("--out", help="default: bench/out/auto_policy_<dataset>.json")
    args = p.parse_args()
    args.out = args.out or str(ROOT / "bench" / "out" / f"auto_policy_{args.dataset}.json")
    with lethe_serve("lethe-auto-", "--no-demo") as (url, admin, client, _):
        http = httpx.Client(base_url=url, timeout=600)

        def ready():
            try:
                return http.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, every=0.2)
        for ds in ("fm-auto", "fm-exact"):
            r = http.post("/v1/datasets", json={"name": ds, "source": args.dataset, "seed": 0}, headers=admin)
            assert r.status_code == 201, r.text
            r = http.post("/v1/models", headers=admin, json={
                "name": ds.replace("fm-", ""), "dataset": ds, "architecture": "cnn", "strategy": {"kind": "monolithic"},
                "training": {"epochs": args.epochs}, "seed": 0})
            assert r.status_code == 202, r.text
        for m in ("auto", "exact"):
            wait_for(lambda: http.get(f"/v1/models/{m}", headers=admin).json()["status"] == "ready", 1800, every=1)
        owners, after = [], None
        while True:  # every owner, a page at a time
            page = http.get("/v1/datasets/fm-auto/owners", params={"limit": 1000, **({"after": after} if after else {})},
                            headers=admin).json()
            owners += page["owners"]
            after = page.get("next_cursor")
            if not after:
                break
        def trained_on(o: dict) -> bool:  # not one of the owners a one-shard model holds out (strategy.holdout)
            models = http.get(f"/v1/owners/{o['owner_id']}", headers=admin).json()["models"]
            return all(m["versions_trained_on_owner"] for m in models if m["model"] in ("auto", "exact"))

        rng = np.random.default_rng(0)
        by_size = sorted(owners, key=lambda o: -o["sample_count"])
        total, batch = sum(o["sample_count"] for o in owners), []
        for o in by_size:
            if sum(b["sample_count"] for b in batch) >= args.share * total:
                break
            if trained_on(o):
                batch.append(o)
        singles = []
        for o in rng.permutation([o for o in owners if o not in batch]):
            if len(singles) == args.owners:
                break
            if trained_on(o):
                singles.append(o["owner_id"])
        scenarios = [(f"one owner ({o})", [o]) for o in singles]
        scenarios.append((f"largest {len(batch)} owners, {sum(b['sample_count'] for b in batch)} rows", [b["owner_id"] for b in batch]))

        def delete(model: str, people: list[str], method: str) -> tuple[float, dict]:
            t0 = time.perf_counter()
            ids = [http.post("/v1/deletion-requests", json={"owner_id": o, "models": [model], "method": method},
                             headers=client).json()["id"] for o in people]
            done = [wait_for(lambda rid=rid: (r := http.get(f"/v1/deletion-requests/{rid}", headers=client).json())
                             ["status"] in ("completed", "failed") and r, 3600, every=0.2) for rid in ids]
            seconds = time.perf_counter() - t0
            assert all(d["status"] == "completed" for d in done), done
            version = http.get(f"/v1/models/{model}/versions/{done[-1]['outcomes'][0]['version']}", headers=admin).json()
            events = http.get("/v1/audit", params={"request_id": ids[-1], "limit": 200}, headers=admin).json()["events"]
            version["attempts"] = [e["data"] for e in events if e["kind"] == "unlearning.attempt"]
            return seconds, version

        def avg_gap(a: dict, e: dict) -> tuple[dict, float | None]:
            gaps = {k: round(100 * abs(a[k] - e[k]), 2) for k in GAP_KEYS if a.get(k) is not None and e.get(k) is not None}
            return gaps, (round(float(np.mean(list(gaps.values()))), 2) if gaps else None)

        rows = []
        for label, people in scenarios:
            auto_s, auto_v = delete("auto", people, "auto")
            exact_s, exact_v = delete("exact", people, "exact")
            a, e = auto_v["metrics"], exact_v["metrics"]
            gaps, gap = avg_gap(a, e)
            first = auto_v["attempts"][0]["metrics"] if auto_v["attempts"] else {}
            _, no_op_gap = avg_gap(first.get("no_op") or {}, e)
            estimates = [(t["method"], (t["metrics"].get("gate") or {}).get("estimated_gap")) for t in auto_v["attempts"]]
            row = {"scenario": label, "forget_size": a.get("forget_size"), "auto_published": auto_v["method"],
                   "auto_tried": [t["method"] for t in a.get("auto_tried", [])], "auto_s": round(auto_s, 1),
                   "exact_s": round(exact_s, 1), "gaps_to_exact": gaps, "avg_gap": gap, "no_op_avg_gap": no_op_gap,
                   "gate_estimates": estimates,
                   "no_op_estimate": (first.get("gate") or {}).get("no_op_estimated_gap")}
            if a.get("auto_skipped"):  # no method was tried: the estimate is in the reason
                row["no_op_estimate"] = float(re.search(r"estimated ([\d.]+) points", a["auto_skipped"]).group(1))
                row["auto_tried"] = ["skipped"]
            rows.append(row)
            print(row, flush=True)
        print("\n| deletion | rows | auto published (tried before) | auto s | exact s | auto's Avg Gap to exact "
              "| doing nothing's | gate's estimates (each try; doing nothing) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            tried = ", ".join(r["auto_tried"]) or "—"
            estimates = ", ".join(f"{m} {g}" for m, g in r["gate_estimates"])
            print(f"| {r['scenario']} | {r['forget_size']} | {r['auto_published']} ({tried}) | {r['auto_s']} | "
                  f"{r['exact_s']} | {r['avg_gap']} | {r['no_op_avg_gap']} | {estimates}; {r['no_op_estimate']} |")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args), "cpus": os.cpu_count()}, indent=1))
        return 0


if __name__ == "__main__":
    sys.exit(main())
