"""Training throughput: Lethe's loop against a plain PyTorch loop, on Fashion-MNIST.

    python bench/training_throughput.py [--models cnn,mlp] [--epochs 2] [--repeats 5]
                                        [--recipes default,full,full+aug] [--rows 60000] [--threads 0]
                                        [--device auto] [--out FILE] [--resume]

Lethe's loop is ``workers.engine.training.train_epochs`` (what trains every SISA slice
step of a shard) with ``make_optimizer``; the plain loop is the usual hand-written one:
the same model (same initial weights), batch size, optimiser, learning-rate schedule,
loss and data (float tensors already on the device), shuffled with ``torch.randperm``
each epoch, batches gathered by index, and the loss read once at the end. Both run in
one process under Lethe's deterministic settings (``make_deterministic``, as a worker
does).

Each repeat trains a fresh model for ``--epochs`` passes over ``--rows`` rows, timed
from the first batch to the last loss on the host; the loops alternate (plain, Lethe,
plain, ...) so drift hits both alike, after one untimed warm-up run of each. Reports
the median samples/second and Lethe's median as a share of the plain loop's. The JSON
under ``--out`` is rewritten after every repeat; ``--resume`` adds a run's repeats to
those already there (same settings), so a long measurement can be made in pieces.

Recipes: ``default`` (Adam, constant rate: every model's recipe before recipes had
more settings); ``full`` (SGD with Nesterov momentum, weight decay, cosine schedule
after a linear warm-up, label smoothing 0.1, gradient clipping at norm 5); ``full+aug``
(Lethe only: ``full`` plus random crop (padding 2) and horizontal flip, compared with
the plain ``full`` loop, which does not augment: the cost of augmentation);
``default+amp`` (CUDA: bf16 autocast in both loops; on the CPU the same as
``default``). Images into convolutions run in channels_last in both loops, on every
device, as Lethe's loop runs them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.engine import nets, sources
from workers.engine.training import (
    DeviceData,
    TrainConfig,
    make_deterministic,
    make_optimizer,
    make_scheduler,
    train_epochs,
)

RECIPES = {
    "default": {},
    "full": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                 warmup_steps=100, label_smoothing=0.1, max_grad_norm=5.0),
    "full+aug": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                     warmup_steps=100, label_smoothing=0.1, max_grad_norm=5.0, random_crop_padding=2,
                     random_horizontal_flip=True),
    # CUDA only (no effect on the CPU): bf16 autocast, in both loops.
    "default+amp": dict(mixed_precision=True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
               seed: int) -> float:
    """The hand-written loop, with the recipe's optimiser, schedule, smoothing and clipping
    written out in plain torch."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, bs = len(x), cfg.batch_size
    steps = -(-n // bs)
    sched = None
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, 1 / (cfg.warmup_steps + 1), 1.0, cfg.warmup_steps),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * epochs - cfg.warmup_steps)],
            milestones=[cfg.warmup_steps])
    amp = cfg.mixed_precision and x.device.type == "cuda"
    # The memory layout Lethe's loop uses (channels_last for images into convolutions, on
    # every device): a layout, not a recipe setting, so both loops run it.
    channels_last = x.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    model.train()
    loss = None
    for _ in range(epochs):
        perm = torch.randperm(n, device=x.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            opt.zero_grad(set_to_none=True)
            xb = x[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            loss = nn.functional.cross_entropy(logits.float(), y[idx], label_smoothing=cfg.label_smoothing)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
    return loss.item()


def lethe_loop(model: nn.Module, cfg: TrainConfig, data: DeviceData, rows: torch.Tensor, *, epochs: int,
               seed: int) -> float:
    return train_epochs(model, make_optimizer(model, cfg), data, rows, cfg, epochs=epochs, seed=seed)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--recipes", default="default,full,full+aug")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rows", type=int, default=60000, help="training rows used (Fashion-MNIST has 60,000)")
    ap.add_argument("--warmup-rows", type=int, default=4096, help="rows of the untimed warm-up run of each loop")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (0: torch's default). On a shared machine 1 is far steadier: "
                         "with 2 threads, OpenMP barriers stall whenever another process takes a core")
    ap.add_argument("--fashion-mnist-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="bench/out/training_throughput.json")
    ap.add_argument("--resume", action="store_true",
                    help="add this run's repeats to those already in --out for the same model, recipe and "
                         "settings (medians over all): a long run can be done in pieces")
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    make_deterministic()
    with tempfile.TemporaryDirectory() as cache:
        raw = sources.load_fashion_mnist(args.fashion_mnist_dir, cache)
    n = min(args.rows, len(raw.y))
    data = DeviceData(np.arange(n), raw.x[:n], raw.y[:n], raw.x_scale, device)
    rows = torch.arange(n)
    samples = n * args.epochs
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {n} rows x "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.repeats} repeats", flush=True)

    times_of: dict[tuple[str, str], dict[str, list[float]]] = {}
    if args.resume and Path(args.out).exists():
        saved = json.loads(Path(args.out).read_text())
        same = {k: saved["meta"]["args"][k] for k in ("epochs", "batch_size", "rows", "threads", "device")}
        if same != {k: getattr(args, k) for k in same}:
            raise SystemExit(f"--resume: {args.out} was measured with other settings: {same}")
        times_of = {(r["model"], r["recipe"]): r["seconds"] for r in saved["results"]}
    for arch in args.models.split(","):
        for recipe in args.recipes.split(","):
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0, **RECIPES[recipe])
            plain_cfg = TrainConfig(**{**cfg.to_dict(), "random_crop_padding": 0, "random_horizontal_flip": False})

            def fresh():
                return nets.build(arch, raw.input_shape, raw.num_classes, seed=0).to(device)

            # Untimed warm-up: allocator, kernels, threads.
            w = min(args.warmup_rows, n)
            plain_loop(fresh(), plain_cfg, data.x[:w], data.y[:w], epochs=1, seed=0)
            lethe_loop(fresh(), cfg, data, rows[:w], epochs=1, seed=0)
            times = times_of.setdefault((arch, recipe), {"plain": [], "lethe": []})
            for r in range(len(times["plain"]), len(times["plain"]) + args.repeats):
                m = fresh()
                times["plain"].append(timed(lambda: plain_loop(m, plain_cfg, data.x, data.y, epochs=args.epochs,
                                                               seed=r), device))
                m = fresh()
                times["lethe"].append(timed(lambda: lethe_loop(m, cfg, data, rows, epochs=args.epochs, seed=r),
                                            device))
                print(f"  {arch} {recipe} repeat {r}: plain {times['plain'][-1]:.2f} s, "
                      f"lethe {times['lethe'][-1]:.2f} s", flush=True)
                write(args, device, summary(times_of, samples))
            row = summary({(arch, recipe): times}, samples)[0]
            print(f"{arch:4s} {recipe:9s} plain {row['plain_samples_per_s']:9.0f}/s  "
                  f"lethe {row['lethe_samples_per_s']:9.0f}/s  lethe/plain {row['lethe_over_plain']:6.1%} "
                  f"(medians of {row['repeats']})", flush=True)

    results = summary(times_of, samples)
    print("\n| model | recipe | plain loop (samples/s) | Lethe's loop (samples/s) | Lethe / plain | repeats |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['recipe']} | {r['plain_samples_per_s']:,.0f} | {r['lethe_samples_per_s']:,.0f} "
              f"| {r['lethe_over_plain']:.1%} | {r['repeats']} |")
    print(f"wrote {write(args, device, results)}")


def summary(times_of: dict, samples: int) -> list[dict]:
    """Median samples/second of each loop, per model and recipe."""
    out = []
    for (arch, recipe), times in times_of.items():
        if not times["plain"]:
            continue
        plain = statistics.median(samples / t for t in times["plain"])
        lethe = statistics.median(samples / t for t in times["lethe"])
        out.append({"model": arch, "recipe": recipe, "plain_samples_per_s": plain, "lethe_samples_per_s": lethe,
                    "lethe_over_plain": lethe / plain, "repeats": len(times["plain"]), "seconds": times})
    return out


def write(args, device, results: list[dict]) -> Path:
    """The results so far as JSON (rewritten after every repeat)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(), "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor(),
            "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return out


if __name__ == "__main__":
    main()
