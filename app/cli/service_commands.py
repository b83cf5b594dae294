"""Service commands: ``lethe serve`` (API + worker on the embedded defaults), ``lethe
api``, ``lethe worker``, ``lethe relay`` and ``lethe migrate``.

Each builds on the ``Settings`` the group made from its options and ``LETHE_*``
variables; a child process (a worker beside ``serve``, an API process beside others)
gets the same global options on its command line.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from app.cli.base import Context, cli, pass_ctx
from app.errors import ApiError
from app.settings import Settings
from models_store import LetheError


def _child(settings: Settings, *args: str) -> list[str]:
    """The command line of a ``lethe`` child process with this process's global options."""
    head = [sys.executable, "-m", "app.cli", "--data-dir", str(settings.data_dir)]
    if settings.store_url:
        head += ["--store", settings.store_url]
    if settings.device:
        head += ["--device", settings.device]
    return head + list(args)


@cli.command()
@pass_ctx
def migrate(c: Context):
    """Apply database migrations (alembic upgrade head), as the tables' owner. On
    PostgreSQL this also keeps the application's role, lethe_app (which may only read
    and append the audit log); LETHE_APP_DB_PASSWORD, if set, becomes its password."""
    import os

    from app.migrate import APP_ROLE, set_app_password, upgrade

    c.settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(c.settings.db_url)
    click.echo(f"database at {_safe_url(c.settings.db_url)} is at the latest schema")
    password = os.environ.get("LETHE_APP_DB_PASSWORD")
    if password and set_app_password(c.settings.db_url, password):
        click.echo(f"role {APP_ROLE} can log in with LETHE_APP_DB_PASSWORD")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True,
              help="API processes (each with its own SO_REUSEPORT socket)")
@click.option("--reuse-port", is_flag=True, hidden=True)
@click.option("--no-access-log", is_flag=True)
@pass_ctx
def api(c: Context, host, port, workers, reuse_port, no_access_log):
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from app import logs, metrics
    from app.main import create_app

    if workers > 1:
        return _api_processes(c.settings, host, port, workers, no_access_log)
    metrics.multiprocess_dir(c.settings.data_dir)  # the API processes' counters add up
    logs.configure(c.settings.log_format)
    settings = c.settings.model_copy(update={"access_log": not no_access_log})
    # uvicorn's own access log prints paths (they may carry owner ids): the app logs routes instead
    config = uvicorn.Config(create_app(settings), log_config=None, access_log=False)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    uvicorn.Server(config).run(sockets=[sock])


def _api_processes(settings: Settings, host: str, port: int, workers: int, no_access_log: bool) -> None:
    """N API processes, each with its own SO_REUSEPORT socket on the same port: the kernel
    spreads connections evenly (one shared socket let one process take nearly all of a
    keep-alive client's connections)."""
    cmd = _child(settings, "api", "--host", host, "--port", str(port), "--workers", "1", "--reuse-port",
                 *(["--no-access-log"] if no_access_log else []))
    children = [subprocess.Popen(cmd) for _ in range(workers)]

    def stop(*_):
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.exit(max(child.wait() for child in children))


@cli.command()
@click.option("--concurrency", type=int, default=None, help="pool processes (env LETHE_WORKER_CONCURRENCY)")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--loglevel", default="info", show_default=True)
@click.option("--name", default="lethe@%h", show_default=True)
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="run the worker as a child and start it again if it dies")
@pass_ctx
def worker(c: Context, concurrency, pool, loglevel, name, supervise):
    """Run a Celery worker on the 'gpu' queue, supervised: Celery's worker can exit on a
    broker it lost mid-task ("Unrecoverable error"), so a worker that exits on its own is
    started again (back-off 1 s doubling to 30 s). SIGTERM or Ctrl-C stops both."""
    if supervise:
        args = ["worker", "--no-supervise", "--pool", pool, "--loglevel", loglevel, "--name", name]
        sys.exit(_supervise(_child(c.settings, *args, *(["--concurrency", str(concurrency)] if concurrency else []))))
    from celery.signals import setup_logging

    from app import logs, metrics
    from app.worker import QUEUE, create_celery

    settings = c.settings.model_copy(update={"worker_concurrency": concurrency}) if concurrency else c.settings
    metrics.multiprocess_dir(settings.data_dir)  # the pool processes' counters add up
    # Celery leaves logging to this handler (in the worker and in each pool process)
    setup_logging.connect(lambda loglevel=None, **_: logs.configure(settings.log_format, loglevel or "INFO"),
                          weak=False)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, registry=metrics.process_registry())
    argv = ["worker", "-Q", QUEUE, "-c", str(settings.worker_concurrency), "--loglevel", loglevel,
            "--pool", pool, "-n", name]
    if settings.worker_max_tasks_per_child > 0:
        argv += ["--max-tasks-per-child", str(settings.worker_max_tasks_per_child)]
    create_celery(settings).worker_main(argv)


def _supervise(argv: list[str], *, backoff: float = 1.0, max_backoff: float = 30.0,
               steady: float = 60.0) -> int:
    """Run ``argv`` and start it again whenever it exits by itself, after a back-off
    (``backoff`` doubling to ``max_backoff``; reset once it ran ``steady`` seconds).

    SIGTERM/SIGINT are passed on to a running child, which is then not restarted; one
    arriving during the back-off stops at once. Returns the exit status: the stopped
    child's (128+N if signal N killed it), or 0 when stopped between children. Reaps
    every exited child (orphans, as PID 1 in a container) without losing its own's."""
    import select

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    stops: list[int] = []

    def on_stop(signum: int, _frame) -> None:
        stops.append(signum)  # acted on in the loop below (woken through the pipe)

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGCHLD: lambda *_: None}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    child: subprocess.Popen | None = None
    forwarded = 0  # how many of ``stops`` the running child was sent
    delay, restart_at, started = backoff, time.monotonic(), 0.0
    try:
        while True:
            exited = _reap(child.pid if child is not None else None)
            if child is not None and exited is not None:
                child.returncode = code = exited  # Popen must not wait for it again
                child = None
                if stops:  # stopped (or it died as the stop came): no restart
                    return 128 - code if code < 0 else code
                if time.monotonic() - started > steady:
                    delay = backoff  # it ran a while: this is a new failure, not a crash loop
                click.echo(f"lethe worker: the worker exited ({code}); starting it again in {delay:g} s",
                           err=True)
                restart_at, delay = time.monotonic() + delay, min(delay * 2, max_backoff)
            if stops and child is None:
                return 0
            if child is not None and forwarded < len(stops):
                for signum in stops[forwarded:]:
                    child.send_signal(signum)
                forwarded = len(stops)
            if child is None and time.monotonic() >= restart_at:
                started = time.monotonic()
                try:
                    child = subprocess.Popen(argv)
                except OSError as exc:  # e.g. fork: EAGAIN; back off as if it had exited
                    click.echo(f"lethe worker: cannot start the worker ({exc}); trying again in {delay:g} s",
                               err=True)
                    restart_at, delay = time.monotonic() + delay, min(delay * 2, max_backoff)
                continue
            # Sleep until a signal (SIGCHLD included) or the restart is due; wake now and
            # then anyway, to reap what a lost SIGCHLD left behind.
            timeout = 1.0 if child is not None else min(1.0, max(0.0, restart_at - time.monotonic()))
            select.select([wake_r], [], [], timeout)
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)


def _reap(pid: int | None) -> int | None:
    """Reap every exited child (``waitpid(-1, WNOHANG)``); return ``pid``'s exit code
    (negative: killed by that signal) if it was among them."""
    code = None
    while True:
        try:
            got, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if got == 0:
            return code
        if got == pid:
            code = os.waitstatus_to_exitcode(status)


@cli.command("worker-ping")
@click.option("--name", default="lethe@%h", show_default=True, help="the worker's node name")
@click.option("--timeout", type=float, default=5.0, show_default=True)
@pass_ctx
def worker_ping(c: Context, name, timeout):
    """Exit 0 if the named worker answers a ping over the broker (a health check)."""
    from app.worker import create_celery

    node = name.replace("%h", socket.gethostname())
    replies = create_celery(c.settings).control.ping(destination=[node], timeout=timeout)
    click.echo(f"{node}: {'ok' if replies else 'no answer'}")
    if not replies:
        raise SystemExit(1)


@cli.command()
@pass_ctx
def relay(c: Context):
    """Run the outbox relay and the webhook sender alone (for deployments that set
    LETHE_RELAY_IN_API=false)."""
    from app import logs
    from app.main import create_app

    logs.configure(c.settings.log_format)
    state = create_app(c.settings, run_relay=False).state
    state.relay.start()
    state.webhooks.start()
    click.echo("outbox relay and webhook sender running; Ctrl-C stops them")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        state.relay.stop()
        state.webhooks.stop()


def ensure_keys(data_dir: Path) -> dict:
    """Keys for the embedded default: kept in ``<data_dir>/api-keys.json`` (mode 600)."""
    path = data_dir / "api-keys.json"
    if path.exists():
        return json.loads(path.read_text())
    keys = {"admin": "adm_" + secrets.token_urlsafe(24), "client": "cli_" + secrets.token_urlsafe(24)}
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
    return keys


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--no-demo", is_flag=True, help="do not import digits and train a demo model")
@pass_ctx
def serve(c: Context, host, port, no_demo):
    """Run the API and a worker together (embedded SQLite defaults); with no keys set,
    generated keys are stored and printed."""
    import uvicorn

    from app import logs, metrics
    from app.main import create_app
    from app.migrate import upgrade

    settings = c.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics.multiprocess_dir(settings.data_dir)  # the API's /metrics adds up the worker's counters
    logs.configure(settings.log_format, "WARNING")
    if not settings.admin_keys and not settings.client_keys:
        keys = ensure_keys(settings.data_dir)
        settings = settings.model_copy(update={"admin_keys": [keys["admin"]], "client_keys": [keys["client"]]})
    upgrade(settings.db_url)
    worker_process = subprocess.Popen(_child(settings, "worker", "--loglevel", "warning"))
    try:
        example = None
        if not no_demo:
            try:
                example = _seed_demo(settings)
            except (ApiError, LetheError) as exc:  # e.g. the CLI demo already used this data directory
                click.echo(f"demo model not set up ({exc.code}: {exc.detail}); serving anyway")
        url = f"http://{host}:{port}"
        click.echo(f"\nLethe is serving at {url}  (OpenAPI docs: {url}/docs, admin console: {url}/console)")
        click.echo(f"admin key:  {settings.admin_keys[0] if settings.admin_keys else '(none)'}")
        click.echo(f"client key: {settings.client_keys[0] if settings.client_keys else '(none)'}")
        if example:
            model, owner = example
            key = settings.client_keys[0] if settings.client_keys else "<client key>"
            click.echo(f"model {model!r} is training on the digits data; once GET {url}/v1/models/{model} says "
                       f"\"ready\", forget an owner with:")
            click.echo(f"  curl -s -X POST {url}/v1/deletion-requests -H 'Authorization: Bearer {key}' "
                       f"-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
                       f"-d '{{\"owner_id\": \"{owner}\"}}'")
            click.echo(f"  curl -s {url}/v1/deletion-requests/<id> -H 'Authorization: Bearer {key}'")
        click.echo()
        uvicorn.run(create_app(settings.model_copy(update={"access_log": False})), host=host, port=port,
                    log_config=None, access_log=False)
    finally:
        worker_process.terminate()
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()


def _seed_demo(settings: Settings) -> tuple[str, str] | None:
    """On a fresh data directory: import digits and queue a small SISA model."""
    from app.datasets import service as datasets
    from app.db import make_sessionmaker, session_scope
    from app.engine import build_engine
    from app.models import service as models
    from app.models.schemas import ModelCreate

    engine = build_engine(settings, device="cpu")
    name, model = "digits", "digits-sisa"
    with session_scope(make_sessionmaker(settings.db_url)) as session:
        if datasets.list_all(session=session):
            return None
        datasets.import_dataset(session=session, engine=engine, actor="lethe-serve", name=name, source="digits")
        session.flush()
        models.create(session=session, actor="lethe-serve", model_in=ModelCreate(
            name=model, dataset=name, architecture="cnn",
            strategy={"kind": "sisa", "shards": 4, "slices": 2}, training={"epochs": 20, "batch_size": 64}))
    owner = engine.dataset(name).owners(limit=1)[0][0]
    return model, owner


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@cli.command()
@click.option("--dry-run", is_flag=True, help="print what would be deleted, delete nothing")
@pass_ctx
def gc(c: Context, dry_run):
    """Purge revoked versions now: delete the artifacts they learned (checkpoints, weights,
    test outputs) that no live version or running job needs, LETHE_PURGE_AFTER_HOURS after
    revocation; and destroy sealed evidence held past LETHE_EVIDENCE_MAX_HOURS (or whose
    key is gone). Uses the service's database and model store."""
    from app.db import make_sessionmaker
    from app.deletions import evidence
    from app.engine import build_engine
    from app.models.purge import purge

    sessions, engine = make_sessionmaker(c.settings.db_url), build_engine(c.settings)
    swept = [] if dry_run else evidence.sweep(sessions, engine, max_hours=c.settings.evidence_max_hours,
                                              actor="lethe-gc")
    report = purge(sessions, engine, c.settings, actor="lethe-gc", dry_run=dry_run)
    lines = [f"{p['model']} v{p['version']}: {len(p['digests'])} artifacts, {p['bytes']} bytes"
             for p in report.purged]
    verb = "would free" if dry_run else "freed"
    lines.append(f"{verb} {report.freed_bytes} bytes in {len(report.purged)} revoked versions")
    if not dry_run:
        lines.append(f"deleted the sealed evidence of {len(swept)} requests")
    c.print({"dry_run": dry_run, "freed_bytes": report.freed_bytes, "purged": report.purged,
             "evidence_destroyed": len(swept)}, "\n".join(lines))


@cli.group()
def certificate():
    """Deletion certificates."""


@certificate.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks", "jwks_from", default=None,
              help="the public keys: a JWKS file or URL (default: this data directory's signing key)")
@pass_ctx
def certificate_verify(c: Context, file: Path, jwks_from: str | None):
    """Check a certificate's signature offline; print what it certifies; exit 0 or 1."""
    import httpx
    import jwt

    from app.certificates import keys
    from lethe.client import verify_token

    try:
        text = file.read_text().strip()
        token = json.loads(text)["certificate"] if text.startswith("{") else text
        if jwks_from is None:
            jwk_set = {"keys": [keys.load(c.settings.signing_key_path, create=False).public_jwk]}
        elif jwks_from.startswith(("http://", "https://")):
            jwk_set = httpx.get(jwks_from, timeout=10).raise_for_status().json()
        else:
            jwk_set = json.loads(Path(jwks_from).read_text())
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        raise click.UsageError(f"cannot read the certificate or the keys: {exc}") from None
    try:
        claims = verify_token(token, jwk_set)
    except (jwt.PyJWTError, ValueError) as exc:
        click.echo(f"certificate INVALID: {exc}")
        raise SystemExit(1)
    kid = jwt.get_unverified_header(token)["kid"]
    lines = [f"certificate OK (key {kid}): request {claims['request_id']} completed {claims['completed_at']}"]
    lines += [f"  {m['model']} v{m['version']} ({'exact' if m['exact'] else 'approximate'}, {m['method']}), "
              f"revoked {[r['version'] for r in m['revoked_versions']]}" for m in claims["models"]]
    c.print(claims, "\n".join(lines))


@cli.group()
def audit():
    """The audit trail."""


@audit.command("verify")
@pass_ctx
def audit_verify(c: Context):
    """Recompute the service's audit chain and hold it against its latest signed anchor
    (in the model store); exit 0 when it holds, 1 when an event was edited or removed,
    or the chain was cut short (truncated) or rewritten since it was anchored."""
    from app.audit import anchors
    from app.certificates import keys
    from app.db import make_sessionmaker, session_scope
    from app.engine import build_engine

    path = c.settings.signing_key_path
    key = keys.load(path, create=False) if path.exists() else None  # anchors are checked against it too
    with session_scope(make_sessionmaker(c.settings.db_url)) as session:
        report = anchors.verify(session, build_engine(c.settings).store, key)
    line = (f"audit chain OK: {report.events} events, head {report.head_hash[:16]}…, anchored at "
            f"{report.anchored_seq}" if report.ok else
            f"audit chain BROKEN at event {report.first_bad_seq}: {report.problem}")
    c.print(report.__dict__, line)
    if not report.ok:
        raise SystemExit(1)
