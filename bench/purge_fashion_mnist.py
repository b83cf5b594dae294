"""What purge frees after one deletion, on the Fashion-MNIST SISA model of
``bench/sisa_fashion_mnist.py``, and how long it takes.

Trains the SISA model (engine only, no service), unlearns one random owner, revokes
the version trained on them (as the service does when the new version is published),
then measures the model store's bytes before and after the purge, and its wall time.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from workers.engine.engine import Engine
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig


def store_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in (root / "objects").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fashion-mnist-dir", default=Settings().fashion_mnist_dir)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    out = Path(args.out)
    data_dir = out / "purge-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(data_dir, progress=lambda m, state=None: m and print("  ", m, flush=True))
    engine.import_dataset("fmnist", "fashion-mnist", seed=args.seed, path=args.fashion_mnist_dir)
    engine.train("sisa", dataset="fmnist", architecture="cnn", strategy=Strategy("sisa", args.shards, args.slices),
                 config=TrainConfig(epochs=args.epochs, seed=args.seed))
    owners = [o for o, _ in engine.dataset("fmnist").owners(limit=100_000)]
    owner = owners[np.random.default_rng(args.seed).integers(len(owners))]
    v2 = engine.unlearn("sisa", [owner], requests=["bench"])
    revoked = engine.revoke_superseded(v2)
    store = data_dir / "models_store"
    before, files_before = store_bytes(store)
    started = time.perf_counter()
    report = engine.purge()
    seconds = time.perf_counter() - started
    after, files_after = store_bytes(store)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {engine.device}",
        "args": vars(args) | {"fashion_mnist_dir": str(args.fashion_mnist_dir)},
        "owner_samples": int(v2["removed"]["sample_count"]),
        "retrained_shards": v2["metrics"]["retrained_shards"],
        "revoked_versions": [r["version"] for r in revoked],
        "store_bytes_before": before, "store_files_before": files_before,
        "store_bytes_after": after, "store_files_after": files_after,
        "freed_bytes": report.freed_bytes, "purged_artifacts": sum(len(p["digests"]) for p in report.purged),
        "purge_seconds": round(seconds, 3),
        "live_version_verifies": engine.verify("sisa", 2)["ok"],
        "revoked_version_verifies": engine.verify("sisa", 1)["ok"],
    }
    print(json.dumps(result, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    (out / "purge_fashion_mnist.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
