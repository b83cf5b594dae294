"""Commands that talk to a Lethe server over HTTP (``lethe.client``): ``delete``,
``status``, ``watch`` and ``certificate get``; ``train``, ``unlearn`` and ``retrain`` come
here when ``--url`` is given. The server is ``--url``/``LETHE_URL`` (default
http://127.0.0.1:8000), the key ``--key``/``LETHE_API_KEY``."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from app.cli.base import Context, cli, pass_ctx
from app.cli.progress import follow
from app.cli.service_commands import certificate


def _deletion_lines(d) -> str:
    lines = [f"request {d.id}: {d.status}" + (f" ({d.failure_reason})" if d.failure_reason else "")
             + (" OVERDUE" if d.overdue else "")]
    for o in d.outcomes:
        version = f" -> v{o.version}" if o.version is not None else ""
        took = f" in {o.seconds:.1f} s" if o.seconds is not None else ""
        lines.append(f"  {o.model}: {o.status}{version} ({o.method}){took}" + (f": {o.error}" if o.error else ""))
    return "\n".join(lines)


def _follow_deletion(c: Context, client, request_id: str):
    """Follow each job serving the request (bars on a terminal) until it is done."""
    progress = c.progress()
    followed: set[str] = set()
    while True:
        d = client.deletion(request_id)
        if d.done:
            return d
        jobs = [o.job_id for o in d.outcomes if o.job_id and o.job_id not in followed]
        for job_id in jobs:
            followed.add(job_id)
            follow(client.job_events(job_id), progress)
        if not jobs:
            time.sleep(1)


@cli.command()
@click.option("--owner", "owner_id", required=True, help="the data owner to forget")
@click.option("--model", "models", multiple=True, help="only these models (repeat; default: every model "
              "that learned from the owner)")
@click.option("--method", default=None, help="exact (default), auto, or an approximate method's name")
@click.option("--reason", default=None, help="kept with the request (never logged)")
@click.option("--idempotency-key", default=None, help="a retry with the same key answers the same request")
@click.option("--wait", is_flag=True, help="follow the request's jobs until it completes or fails (exit 1 if it fails)")
@pass_ctx
def delete(c: Context, owner_id, models, method, reason, idempotency_key, wait):
    """File a deletion request with the server."""
    with c.client() as client:
        d = client.delete(owner_id, models=list(models) or None, method=method, reason=reason,
                          idempotency_key=idempotency_key)
        if wait:
            d = _follow_deletion(c, client, d.id)
    c.print(d.model_dump(mode="json"), _deletion_lines(d))
    if d.status == "failed":
        raise SystemExit(1)


@cli.command()
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="follow it until it completes or fails (exit 1 if it fails)")
@pass_ctx
def status(c: Context, request_id, wait):
    """A deletion request's status and, per model, its outcome."""
    with c.client() as client:
        d = _follow_deletion(c, client, request_id) if wait else client.deletion(request_id)
    c.print(d.model_dump(mode="json"), _deletion_lines(d))
    if wait and d.status == "failed":
        raise SystemExit(1)


@cli.command()
@click.argument("job_id")
@pass_ctx
def watch(c: Context, job_id):
    """Follow a job on the server (its Server-Sent Events) until it ends; exit 1 if it failed."""
    with c.client() as client:
        final = follow(client.job_events(job_id), c.progress())
        job = client.job(job_id)
    c.print(job.model_dump(mode="json"), f"job {job_id}: {final}" + (f" ({job.error})" if job.error else ""))
    if final != "completed":
        raise SystemExit(1)


@certificate.command("get")
@click.argument("request_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write it to this file (`lethe certificate verify FILE` reads it)")
@pass_ctx
def certificate_get(c: Context, request_id, output):
    """Fetch a completed request's signed certificate from the server (a JWS)."""
    with c.client() as client:
        token = client.certificate(request_id)
    if output:
        output.write_text(json.dumps({"certificate": token}) + "\n")
    c.print({"certificate": token}, f"certificate written to {output}" if output else token)


def train(c: Context, name: str, dataset: str, architecture: str, strategy, config, architecture_params: dict,
          init_weights: Path | None) -> None:
    """``lethe --url U train``: queue the model on the server and follow its job."""
    if init_weights is not None:
        raise click.UsageError("--init-weights is local only: upload the backbone with POST /v1/backbones "
                               "and name its digest as init in --recipe")
    training = dataclasses.asdict(config)
    seed = training.pop("seed")
    kind = {k: v for k, v in dataclasses.asdict(strategy).items() if v is not None}
    with c.client() as client:
        job = client.create_model(name, dataset, architecture=architecture, strategy=kind, training=training,
                                  architecture_params=architecture_params or None, seed=seed)
        follow(client.job_events(job.id), c.progress())
        model = client.model(name)
        version = client.version(name) if model.status == "ready" else None
    text = (f"{name}: {model.status}" + (f", version {model.latest_version}" if version else "")
            + (f" ({model.error})" if model.error else ""))
    c.print((version or model).model_dump(mode="json"), text)
    if model.status != "ready":
        raise SystemExit(1)


def retrain(c: Context, name: str) -> None:
    """``lethe --url U retrain``: queue the full retrain on the server and follow it."""
    with c.client() as client:
        job = client.retrain(name)
        final = follow(client.job_events(job.id), c.progress())
        model = client.model(name)
        version = client.version(name) if final == "completed" else None
    c.print((version or model).model_dump(mode="json"),
            f"{name}: retrain {final}" + (f", version {version.version}" if version else ""))
    if final != "completed":
        raise SystemExit(1)


def unlearn(c: Context, model: str, owner_ids: list[str], method: str | None) -> None:
    """``lethe --url U unlearn``: one deletion request per owner, for this model, followed."""
    with c.client() as client:
        filed = [client.delete(owner, models=[model], method=method) for owner in owner_ids]
        done = [_follow_deletion(c, client, d.id) for d in filed]
    c.print([d.model_dump(mode="json") for d in done], "\n".join(_deletion_lines(d) for d in done))
    if any(d.status == "failed" for d in done):
        raise SystemExit(1)
