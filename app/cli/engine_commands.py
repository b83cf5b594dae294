"""``lethe`` commands over the unlearning engine, in this process: import, train,
unlearn, inspect and verify, and a demo."""
from __future__ import annotations

import json
from pathlib import Path

import click

from app.cli import remote_commands
from app.cli.base import Context, LazyChoice, cli, pass_ctx
from workers.engine.placement import PARTITIONS
from workers.engine.sources import SOURCES

# The registries below import torch: read when an option that names one is used.


def _architectures() -> list[str]:
    from workers.engine.nets import ARCHITECTURES

    return ARCHITECTURES.names()


def _aggregations() -> list[str]:
    from workers.engine.sisa import AGGREGATIONS

    return AGGREGATIONS.names()


def _methods() -> list[str]:
    from workers.engine.unlearning import METHODS

    return METHODS.names()


@cli.command("import")
@click.argument("name")
@click.option("--source", required=True, type=click.Choice(SOURCES.names()))
@click.option("--path", default=None, help="npz file, a table (CSV, Parquet), an image-folder archive or "
              "directory, or the directory of Fashion-MNIST IDX files")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="what the file is, for table (label_column, owner_column, ...) and image-folder (image_size, "
                   "...) sources; VALUE read as JSON when it parses, else text; repeatable")
@click.option("--seed", type=int, default=0, show_default=True, help="owner assignment (and digits split) seed")
@click.option("--owners", type=int, default=None, help="number of owners to assign (default samples/20)")
@click.option("--zipf-a", type=float, default=0.75, show_default=True, help="Zipf exponent of the owner skew")
@click.option("--label-alpha", type=float, default=None,
              help="owners get a class mix of their own, shares ~ Dirichlet(LABEL_ALPHA); small: 1-2 classes each")
@pass_ctx
def import_(c: Context, name, source, path, options, seed, owners, zipf_a, label_alpha):
    """Import a dataset with its per-sample owner ledger."""
    # Not through the engine: it imports torch, which an import never uses (276 MiB of an
    # idle process, the whole margin of a larger-than-memory import in a 512 MiB worker).
    from app.engine import build_importer

    info = build_importer(c.settings, progress=c.progress())(
        name, source, seed=seed, path=path, owners=owners, zipf_a=zipf_a, label_alpha=label_alpha,
        options=_key_values(options, hint="--option") or None)
    c.print(info.__dict__, f"dataset {info.name}: {info.n_samples} samples, {info.n_owners} owners, "
            f"{info.n_test} test samples, input {info.input_shape}, {info.num_classes} classes")


@cli.command()
@pass_ctx
def datasets(c: Context):
    """List datasets."""
    engine = c.engine()
    infos = [engine.dataset(n).info() for n in engine.datasets.names()]
    c.print([i.__dict__ for i in infos],
            "\n".join(f"{i.name}\t{i.source['kind']}\t{i.n_samples} samples\t{i.n_owners} owners" for i in infos)
            or "no datasets")


@cli.command()
@click.argument("dataset")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--after", default=None, help="page after this owner id")
@pass_ctx
def owners(c: Context, dataset, limit, after):
    """Owner ids of a dataset with their sample counts."""
    rows = c.engine().dataset(dataset).owners(limit=limit, after=after)
    c.print([{"owner_id": o, "samples": n} for o, n in rows], "\n".join(f"{o}\t{n}" for o, n in rows))


@cli.command()
@click.argument("name")
@click.option("--dataset", required=True)
@click.option("--arch", default="cnn", show_default=True, type=LazyChoice(_architectures))
@click.option("--strategy", default="sisa", show_default=True,
              type=click.Choice(["sisa", "monolithic", "linear", "gd"]),
              help="linear: a logistic-regression head that the certified method removes from, on the raw rows "
                   "(--arch linear) or on the frozen features of --arch with --init-weights (a backbone)")
@click.option("--epsilon", type=float, default=None, help="linear: the certified removal budget's epsilon (1.0)")
@click.option("--delta", type=float, default=None, help="linear: its delta (1e-4)")
@click.option("--noise", type=float, default=None, help="linear: the loss perturbation's standard deviation (1.0)")
@click.option("--l2", type=float, default=None, help="linear: the L2 penalty (1e-3)")
@click.option("--trainer", type=click.Choice(["solver", "gd"]), default=None,
              help="linear: solver (default; certified removal) or gd (gradient descent; deltagrad removal)")
@click.option("--iterations", type=int, default=None, help="linear gd and the gd kind: steps (300)")
@click.option("--gd-lr", type=float, default=None, help="linear gd: step size (4.0); the gd kind: (0.1)")
@click.option("--shards", type=int, default=4, show_default=True)
@click.option("--slices", type=int, default=2, show_default=True)
@click.option("--aggregation", default="mean_softmax", show_default=True, type=LazyChoice(_aggregations))
@click.option("--partition", default="balanced", show_default=True, type=click.Choice(PARTITIONS),
              help="sisa: how owners are placed in shards (label, kmeans: similar owners together)")
@click.option("--holdout", type=float, default=None,
              help="sisa, monolithic: the share of rows (whole owners) kept out of training for approximate "
                   "methods' stopping rules (default 0.02 on one shard, else 0)")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--slice-epochs", default="each", show_default=True, type=click.Choice(["each", "budget"]),
              help="each: --epochs passes at every slice step; budget: 2*epochs/(R+1) per step "
                   "so the total matches --epochs over the shard")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--recipe", "recipe_json", default=None, metavar="JSON|@FILE",
              help="the training recipe as a JSON object (the API's `training`: optimizer, schedule, "
                   "label_smoothing, ...); the options above, when given, override it")
@click.option("--init-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="a checkpoint pretrained elsewhere (a backbone: state dict or archive); every constituent "
                   "starts from the parameters of it that fit")
@click.option("--arch-param", "arch_params", multiple=True, metavar="KEY=VALUE",
              help="an architecture parameter (VALUE read as JSON when it parses, else text); repeatable")
@pass_ctx
def train(c: Context, name, dataset, arch, strategy, epsilon, delta, noise, l2, trainer, iterations, gd_lr, shards,
          slices, aggregation, partition, holdout, epochs,
          slice_epochs, batch_size, lr, seed, recipe_json, init_weights, arch_params):
    """Train a model and publish version 1 (`lethe architectures` lists the architectures)."""
    from workers.engine.sisa import Strategy

    try:
        if strategy == "linear":
            strat = Strategy("linear", epsilon=epsilon, delta=delta, noise=noise, l2=l2, trainer=trainer,
                             iterations=iterations, lr=gd_lr)
        elif strategy == "gd":
            strat = Strategy("gd", l2=l2, iterations=iterations, lr=gd_lr)
        elif strategy == "monolithic":
            strat = Strategy("monolithic", aggregation=aggregation, holdout=holdout)
        else:
            strat = Strategy("sisa", shards, slices, aggregation, partition=partition, holdout=holdout)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    config = _recipe(recipe_json, epochs=epochs, slice_epochs=slice_epochs, batch_size=batch_size, lr=lr, seed=seed)
    if c.url:
        return remote_commands.train(c, name, dataset, arch, strat, config, _key_values(arch_params), init_weights)
    v = c.engine().train(name, dataset=dataset, architecture=arch, strategy=strat, config=config,
                         architecture_params=_key_values(arch_params),
                         init_weights=init_weights.read_bytes() if init_weights else None)
    c.print(v, summary(v))


@cli.command("import-model")
@click.argument("name")
@click.option("--dataset", required=True)
@click.option("--arch", required=True, help="the architecture the weights are for (`lethe architectures`)")
@click.option("--weights", "weights_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a safetensors or torch.save state dict, or a TorchScript / torch.export (.pt2) archive")
@click.option("--recipe", "recipe_json", default=None, metavar="JSON|@FILE",
              help="the recipe an exact unlearning retrains it with (JSON object, as for `lethe train`)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--arch-param", "arch_params", multiple=True, metavar="KEY=VALUE",
              help="an architecture parameter (VALUE read as JSON when it parses, else text); repeatable")
@pass_ctx
def import_model(c: Context, name, dataset, arch, weights_file, recipe_json, seed, arch_params):
    """Publish a model trained elsewhere as version 1 (kind imported) of a monolithic model."""
    config = _recipe(recipe_json, seed=seed)
    v = c.engine().import_model(name, dataset=dataset, architecture=arch, weights=weights_file.read_bytes(),
                                architecture_params=_key_values(arch_params), config=config)
    c.print(v, summary(v))


def _recipe(recipe_json: str | None, **options):
    """The TrainConfig of ``--recipe`` (JSON, or ``@file``) with the options given on the
    command line (not left at their defaults) laid over it."""
    from workers.engine.training import TrainConfig

    ctx = click.get_current_context()
    recipe = {}
    if recipe_json:
        text = Path(recipe_json[1:]).read_text() if recipe_json.startswith("@") else recipe_json
        try:
            recipe = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--recipe") from None
        if not isinstance(recipe, dict):
            raise click.BadParameter("expected a JSON object", param_hint="--recipe")
    for key, value in options.items():
        if key not in recipe or ctx.get_parameter_source(key) is not click.core.ParameterSource.DEFAULT:
            recipe[key] = value
    try:
        return TrainConfig(**recipe)
    except TypeError as exc:
        raise click.BadParameter(f"unknown setting: {exc}", param_hint="--recipe") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--recipe") from None


def _key_values(pairs: tuple[str, ...], hint: str = "--arch-param") -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=hint)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@cli.command()
@pass_ctx
def architectures(c: Context):
    """The installed architectures: built in, torchvision's, and plugins, with parameters."""
    from workers.engine import nets

    rows = nets.describe()
    c.print(rows, "\n".join(f"{a['name']}\t{a['source']}\t{a['parameters'] or ''}" for a in rows))


@cli.command()
@click.argument("model")
@click.option("--owner", "owner_ids", multiple=True, required=True, help="owner id (repeat for a batch)")
@click.option("--request", "requests", multiple=True, help="request id(s) to record")
@click.option("--full", is_flag=True, help="retrain every shard from scratch instead")
@click.option("--method", default=None, type=LazyChoice(_methods),
              help="unlearn the touched constituents approximately with this method (no gate here: the version "
                   "is published with its metrics; the service gates it)")
@pass_ctx
def unlearn(c: Context, model, owner_ids, requests, full, method):
    """Erase owners and retrain the touched shards (exact), or unlearn them with --method."""
    if method and full:
        raise click.UsageError("--full and --method exclude each other")
    if c.url:
        if full or requests:
            raise click.UsageError("--full and --request are local only: the server files its own requests")
        return remote_commands.unlearn(c, model, list(owner_ids), method)
    mode = "full" if full else "approximate" if method else "sisa"
    v = c.engine().unlearn(model, list(owner_ids), requests=list(requests) or None, mode=mode, method=method)
    if v is None:
        c.print(None, f"nothing to unlearn: {model} already excludes those owners' samples")
    else:
        c.print(v, summary(v))


@cli.command()
@click.argument("model")
@pass_ctx
def retrain(c: Context, model):
    """Full retrain of every shard on the current data (the reference)."""
    if c.url:
        return remote_commands.retrain(c, model)
    v = c.engine().retrain_full(model)
    c.print(v, summary(v))


@cli.command()
@pass_ctx
def models(c: Context):
    """List models."""
    engine = c.engine()
    rows = [{**engine.store.model_spec(n), "latest": engine.store.latest_number(n)} for n in engine.store.model_names()]
    c.print(rows, "\n".join(
        f"{r['name']}\t{r['architecture']}\t{r['strategy']['kind']} {r['strategy']['shards']}x{r['strategy']['slices']}"
        f"\tdataset {r['dataset']}\tlatest v{r['latest']}" for r in rows) or "no models")


@cli.command()
@click.argument("model")
@pass_ctx
def versions(c: Context, model):
    """List a model's versions."""
    engine = c.engine()
    records = [engine.version(model, n) for n in engine.store.version_numbers(model)]
    c.print(records, "\n".join(
        f"v{v['version']}\tparent {v['parent']}\t{v['kind']}\t{v['n_samples']} samples\t"
        f"test acc {v['metrics']['test_accuracy']}\t{v['metrics']['wall_seconds']}s\t"
        f"removed {v['removed']['sample_count']}\t{v['created_at']}" for v in records))


def _version_number(value: str) -> int | str:
    if value == "latest":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"a version is a number or 'latest', got {value!r}") from None


@cli.command()
@click.argument("model")
@click.argument("version", default="latest")
@pass_ctx
def show(c: Context, model, version):
    """Show one version: manifest digest, metrics, lineage."""
    engine = c.engine()
    v = engine.version(model, _version_number(version))
    lineage = [v["version"]]
    while (parent := engine.version(model, lineage[-1])["parent"]) is not None:
        lineage.append(parent)
    v["lineage"] = lineage
    c.print(v, details(v) + "\nlineage: " + " <- ".join(f"v{n}" for n in lineage))


@cli.command()
@click.argument("model")
@click.argument("version", default="latest")
@pass_ctx
def verify(c: Context, model, version):
    """Recompute a version's digests from the stored bytes; list erased owners in it."""
    report = c.engine().verify(model, _version_number(version))
    lines = [f"{report['model']} v{report['version']}: {'OK' if report['ok'] else 'FAILED'}"]
    if report["revoked"]:
        r = report["revoked"]
        by = f"replaced by v{r['replaced_by']}" if r["replaced_by"] is not None else "withdrawn, not replaced"
        lines.append(f"  REVOKED at {r['revoked_at']}, {by} "
                     f"(requests {', '.join(r['requests']) or '-'}): it was trained on erased samples")
    if report.get("purged"):
        p = report["purged"]
        lines.append(f"  PURGED at {p['purged_at']}: {len(p['digests'])} learned artifacts, {p['bytes']} bytes deleted")
    lines += [f"  problem: {p}" for p in report["problems"]]
    if report["ok"]:
        lines.append(f"  manifest digest {report['manifest_digest']} recomputed from the stored sample ids")
        erased = report["erased_owners_in_manifest"]
        lines.append("  trained on no erased sample" if not erased else
                     "  trained on samples erased since: " + ", ".join(f"{e['owner_id']} ({e['samples']})" for e in erased))
    c.print(report, "\n".join(lines))
    if not report["ok"]:
        raise SystemExit(1)


@cli.command()
@pass_ctx
def demo(c: Context):
    """Import digits, train a SISA model, forget one owner."""
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    engine, data_dir = c.engine(), c.settings.data_dir
    if not engine.datasets.exists("digits"):
        info = engine.import_dataset("digits", "digits", seed=0)
        click.echo(f"imported digits: {info.n_samples} samples from {info.n_owners} owners (Zipf-assigned, seed 0)")
    if "digits-sisa" not in engine.store.model_names():
        v1 = engine.train("digits-sisa", dataset="digits", architecture="cnn",
                          strategy=Strategy("sisa", 4, 2), config=TrainConfig(epochs=20))
        click.echo(summary(v1))
    owners_left = engine.dataset("digits").owners(limit=1000)
    if not owners_left:
        click.echo("every owner has been erased already")
        return
    owner, count = max(owners_left, key=lambda oc: oc[1])
    click.echo(f"\nforgetting {owner} ({count} samples) ...")
    v = engine.unlearn("digits-sisa", [owner], requests=["demo"])
    click.echo(details(v))
    click.echo(f"\n{owner} now holds {len(engine.dataset('digits').owner_sample_ids(owner))} samples in 'digits'.")
    click.echo(f"Inspect with: lethe --data-dir {data_dir} versions digits-sisa")
    click.echo(f"Verify with:  lethe --data-dir {data_dir} verify digits-sisa")


def _why_retrained(cert: dict) -> str:
    if "exhausted_bound" in cert:
        return " (retrained: the budget had run out)"
    if cert.get("no_certified_state"):
        return " (retrained: the parent's weights came from another method, with no certified state)"
    return ""


def summary(v: dict) -> str:
    m = v["metrics"]
    text = (f"published {v['model']} v{v['version']} ({v['kind']}): {v['n_samples']} samples, "
            f"test accuracy {m['test_accuracy']}, {m['wall_seconds']}s, retrained shards {m['retrained_shards']}, "
            f"manifest {v['manifest_digest'][:16]}")
    if m.get("ua") is not None:
        # A dataset without held-out rows (a table) has no TA, expected UA or held-out MIA.
        text += (f"\nforget set {m['forget_size']}: UA {m['ua']:.4f} (expected {m.get('expected_ua')}), "
                 f"MIA-efficacy {m.get('mia_efficacy')} (held-out {m.get('mia_heldout')}), RA {m.get('ra')}, "
                 f"TA {m.get('ta')}"
                 f"{'' if v.get('exact', True) else ', approximate (' + v['method']['name'] + ')'}")
    cert = m.get("certified")
    if cert is not None:
        text += (f"\ncertified (epsilon {cert['epsilon']:g}, delta {cert['delta']:g}): residual bound "
                 f"{cert['residual_bound']:.4g} of {cert['budget']:.4g}, {cert['removals_since_training']} removals "
                 f"since training{_why_retrained(cert)}")
    replay = m.get("deltagrad")
    if replay is not None and "exact_steps" in replay:
        text += (f"\ndeltagrad: {replay['exact_steps']} exact and {replay['approximate_steps']} approximated steps "
                 "of the training replayed")
    elif replay is not None and replay.get("retrained"):
        text += "\ndeltagrad: retrained by gradient descent" + (
            " (the parent's weights came from another method, with no trajectory)" if replay.get("no_trajectory") else "")
    return text


def details(v: dict) -> str:
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
