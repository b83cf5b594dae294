"""``lethe``: the command line over the unlearning engine, and the service commands.

Global options come before the subcommand: ``lethe --data-dir D train ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from models_store import StoreError
from workers.engine.errors import EngineError


def _engine(args):
    from workers.engine.engine import Engine

    progress = (lambda m: print(f"  {m}", file=sys.stderr, flush=True)) if not args.quiet else None
    return Engine(args.data_dir, store_url=args.store, device=args.device, progress=progress)


def _print(args, obj, text: str) -> None:
    print(json.dumps(obj, indent=1, default=str) if args.json else text)


def cmd_import(args):
    path = args.path
    info = _engine(args).import_dataset(
        args.name, args.source, seed=args.seed, path=path, owners=args.owners, zipf_a=args.zipf_a
    )
    _print(args, info.__dict__, f"dataset {info.name}: {info.n_samples} samples, {info.n_owners} owners, "
           f"{info.n_test} test samples, input {info.input_shape}, {info.num_classes} classes")


def cmd_datasets(args):
    engine = _engine(args)
    infos = [engine.dataset(n).info() for n in engine.datasets.names()]
    _print(args, [i.__dict__ for i in infos],
           "\n".join(f"{i.name}\t{i.source['kind']}\t{i.n_samples} samples\t{i.n_owners} owners" for i in infos)
           or "no datasets")


def cmd_owners(args):
    rows = _engine(args).dataset(args.dataset).owners(limit=args.limit, after=args.after)
    _print(args, [{"owner_id": o, "samples": c} for o, c in rows], "\n".join(f"{o}\t{c}" for o, c in rows))


def cmd_train(args):
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    try:
        if args.strategy == "monolithic":
            strategy = Strategy("monolithic", aggregation=args.aggregation)
        else:
            strategy = Strategy("sisa", args.shards, args.slices, args.aggregation)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             slice_epochs=args.slice_epochs)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    v = _engine(args).train(args.name, dataset=args.dataset, architecture=args.arch, strategy=strategy, config=config)
    _print(args, v, _summary(v))


def cmd_unlearn(args):
    engine = _engine(args)
    if args.method and args.full:
        raise EngineError("--full and --method exclude each other")
    mode = "full" if args.full else "approximate" if args.method else "sisa"
    v = engine.unlearn(args.model, args.owner, requests=args.request, mode=mode, method=args.method)
    if v is None:
        _print(args, None, f"nothing to unlearn: {args.model} already excludes those owners' samples")
    else:
        _print(args, v, _summary(v))


def cmd_retrain(args):
    v = _engine(args).retrain_full(args.model)
    _print(args, v, _summary(v))


def cmd_models(args):
    engine = _engine(args)
    rows = []
    for name in engine.store.model_names():
        spec = engine.store.model_spec(name)
        rows.append({**spec, "latest": engine.store.latest_number(name)})
    _print(args, rows, "\n".join(
        f"{r['name']}\t{r['architecture']}\t{r['strategy']['kind']} {r['strategy']['shards']}x{r['strategy']['slices']}"
        f"\tdataset {r['dataset']}\tlatest v{r['latest']}" for r in rows) or "no models")


def cmd_versions(args):
    engine = _engine(args)
    records = [engine.version(args.model, n) for n in engine.store.version_numbers(args.model)]
    _print(args, records, "\n".join(
        f"v{v['version']}\tparent {v['parent']}\t{v['kind']}\t{v['n_samples']} samples\t"
        f"test acc {v['metrics']['test_accuracy']}\t{v['metrics']['wall_seconds']}s\t"
        f"removed {v['removed']['sample_count']}\t{v['created_at']}" for v in records))


def cmd_show(args):
    number = args.version if args.version == "latest" else int(args.version)
    engine = _engine(args)
    v = engine.version(args.model, number)
    lineage = [v["version"]]
    while (parent := engine.version(args.model, lineage[-1])["parent"]) is not None:
        lineage.append(parent)
    v["lineage"] = lineage
    _print(args, v, _details(v) + "\nlineage: " + " <- ".join(f"v{n}" for n in lineage))


def cmd_verify(args):
    number = args.version if args.version == "latest" else int(args.version)
    report = _engine(args).verify(args.model, number)
    lines = [f"{report['model']} v{report['version']}: {'OK' if report['ok'] else 'FAILED'}"]
    lines += [f"  problem: {p}" for p in report["problems"]]
    if report["ok"]:
        lines.append(f"  manifest digest {report['manifest_digest']} recomputed from the stored sample ids")
        erased = report["erased_owners_in_manifest"]
        lines.append(
            "  trained on no erased sample" if not erased else
            "  trained on samples erased since: " + ", ".join(f"{e['owner_id']} ({e['samples']})" for e in erased)
        )
    _print(args, report, "\n".join(lines))
    if not report["ok"]:
        raise SystemExit(1)


def cmd_demo(args):
    """The main job on embedded defaults: digits, a SISA model, one owner forgotten."""
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    engine = _engine(args)
    if not engine.datasets.exists("digits"):
        info = engine.import_dataset("digits", "digits", seed=0)
        print(f"imported digits: {info.n_samples} samples from {info.n_owners} owners (Zipf-assigned, seed 0)")
    if "digits-sisa" not in engine.store.model_names():
        v1 = engine.train("digits-sisa", dataset="digits", architecture="cnn",
                          strategy=Strategy("sisa", 4, 2), config=TrainConfig(epochs=20))
        print(_summary(v1))
    owners = engine.dataset("digits").owners(limit=1000)
    if not owners:
        print("every owner has been erased already")
        return
    owner, count = max(owners, key=lambda oc: oc[1])
    print(f"\nforgetting {owner} ({count} samples) ...")
    v = engine.unlearn("digits-sisa", [owner], requests=["demo"])
    print(_details(v))
    print(f"\n{owner} now holds {len(engine.dataset('digits').owner_sample_ids(owner))} samples in 'digits'.")
    print(f"Inspect with: lethe --data-dir {args.data_dir} versions digits-sisa")
    print(f"Verify with:  lethe --data-dir {args.data_dir} verify digits-sisa")


def _summary(v: dict) -> str:
    m = v["metrics"]
    text = (f"published {v['model']} v{v['version']} ({v['kind']}): {v['n_samples']} samples, "
            f"test accuracy {m['test_accuracy']}, {m['wall_seconds']}s, retrained shards {m['retrained_shards']}, "
            f"manifest {v['manifest_digest'][:16]}")
    if m.get("ua") is not None:
        text += (f"\nforget set {m['forget_size']}: UA {m['ua']:.4f} (expected {m['expected_ua']}), "
                 f"MIA-efficacy {m['mia_efficacy']} (held-out {m['mia_heldout']}), RA {m['ra']}, TA {m['ta']}"
                 f"{'' if v.get('exact', True) else ', approximate (' + v['method']['name'] + ')'}")
    return text


def _details(v: dict) -> str:
    lines = [
        f"{v['model']} v{v['version']}  parent: {v['parent']}  kind: {v['kind']}  created: {v['created_at']}",
        f"dataset {v['dataset']}  architecture {v['architecture']}  strategy {v['strategy']}",
        f"manifest digest {v['manifest_digest']}  ({v['n_samples']} samples)",
        f"record sha256 {v['record_sha256']}",
        f"metrics {json.dumps(v['metrics'])}",
        f"removed {v['removed']['sample_count']} samples of owners "
        f"{[o['owner_id'] for o in v['removed']['owners']]} requests {v['removed']['requests']}",
        "constituents:",
    ]
    for c in v["constituents"]:
        origin = "" if c["retrained_from_slice"] is None else f" from slice {c['retrained_from_slice']}"
        lines.append(f"  shard {c['shard']}: {c['status']}{origin}, {c['n_samples']} samples, "
                     f"manifest {c['manifest_digest'][:16]}, weights {c['weights'][:16]}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lethe", description="Lethe: exact machine unlearning for owner-keyed data")
    p.add_argument("--data-dir", default=os.environ.get("LETHE_DATA_DIR", "lethe-data"),
                   help="datasets and model store root (env LETHE_DATA_DIR, default ./lethe-data)")
    p.add_argument("--store", default=os.environ.get("LETHE_STORE_URL"),
                   help="model store path or fsspec URL (env LETHE_STORE_URL, default <data-dir>/models_store)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("import", help="import a dataset with its per-sample owner ledger")
    s.add_argument("name")
    s.add_argument("--source", required=True, choices=["fashion-mnist", "digits", "npz"])
    s.add_argument("--path", help="npz file, or directory of Fashion-MNIST IDX files")
    s.add_argument("--seed", type=int, default=0, help="owner assignment (and digits split) seed")
    s.add_argument("--owners", type=int, default=None, help="number of owners to assign (default samples/20)")
    s.add_argument("--zipf-a", type=float, default=0.75, help="Zipf exponent of the owner skew")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("datasets", help="list datasets")
    s.set_defaults(func=cmd_datasets)

    s = sub.add_parser("owners", help="owner ids of a dataset with their sample counts")
    s.add_argument("dataset")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--after", default=None, help="page after this owner id")
    s.set_defaults(func=cmd_owners)

    s = sub.add_parser("train", help="train a model and publish version 1")
    s.add_argument("name")
    s.add_argument("--dataset", required=True)
    s.add_argument("--arch", default="cnn", choices=["mlp", "cnn", "resnet18"])
    s.add_argument("--strategy", default="sisa", choices=["sisa", "monolithic"])
    s.add_argument("--shards", type=int, default=4)
    s.add_argument("--slices", type=int, default=2)
    s.add_argument("--aggregation", default="mean_softmax", choices=["mean_softmax", "vote"])
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--slice-epochs", default="each", choices=["each", "budget"],
                   help="each: --epochs passes at every slice step; budget: 2*epochs/(R+1) per step "
                        "so the total matches --epochs over the shard")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("unlearn", help="erase owners and retrain the touched shards (exact)")
    s.add_argument("model")
    s.add_argument("--owner", action="append", required=True, help="owner id (repeat for a batch)")
    s.add_argument("--request", action="append", default=None, help="request id(s) to record")
    s.add_argument("--full", action="store_true", help="retrain every shard from scratch instead")
    s.add_argument("--method", default=None,
                   help="unlearn the touched constituents approximately with this method: ft, ga, rl, iu, "
                        "l1_sparse, fisher, ssd, salun or scrub (no gate here: "
                        "the version is published with its metrics; the service gates it)")
    s.set_defaults(func=cmd_unlearn)

    s = sub.add_parser("retrain", help="full retrain of every shard on the current data (the reference)")
    s.add_argument("model")
    s.set_defaults(func=cmd_retrain)

    s = sub.add_parser("models", help="list models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("versions", help="list a model's versions")
    s.add_argument("model")
    s.set_defaults(func=cmd_versions)

    s = sub.add_parser("show", help="show one version: manifest digest, metrics, lineage")
    s.add_argument("model")
    s.add_argument("version", nargs="?", default="latest")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("verify", help="recompute a version's digests from the stored bytes; list erased owners in it")
    s.add_argument("model")
    s.add_argument("version", nargs="?", default="latest")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="import digits, train a SISA model, forget one owner")
    s.set_defaults(func=cmd_demo)

    from app.serve import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (EngineError, StoreError) as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad numbers, e.g. a version that is not an integer
        print(f"error [invalid_argument]: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
