"""Service commands: ``lethe serve`` (API + worker on the embedded defaults), ``lethe api``,
``lethe worker``, ``lethe relay`` and ``lethe migrate``."""
from __future__ import annotations

import json
import os
import argparse
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

from app.errors import ApiError
from app.settings import get_settings
from workers.engine import EngineError


def _apply_globals(args) -> None:
    # The global --data-dir/--store options override the environment for these commands.
    os.environ["LETHE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.store:
        os.environ["LETHE_STORE_URL"] = args.store
    if args.device:
        os.environ["LETHE_DEVICE"] = args.device
    get_settings.cache_clear()


def cmd_migrate(args):
    from app.migrate import upgrade

    _apply_globals(args)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    print(f"database at {_safe_url(settings.db_url)} is at the latest schema")


def cmd_api(args):
    import uvicorn

    _apply_globals(args)
    if args.workers > 1:
        return _api_processes(args)
    config = uvicorn.Config("app.main:create_app", factory=True, log_level="info", access_log=not args.no_access_log)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    uvicorn.Server(config).run(sockets=[sock])


def _api_processes(args) -> None:
    """N API processes, each with its own SO_REUSEPORT socket on the same port: the kernel
    spreads connections evenly (one shared socket let one process take nearly all of a
    keep-alive client's connections)."""
    cmd = [sys.executable, "-m", "app.cli", "api", "--host", args.host, "--port", str(args.port), "--workers", "1",
           "--reuse-port"] + (["--no-access-log"] if args.no_access_log else [])
    children = [subprocess.Popen(cmd, env=os.environ.copy()) for _ in range(args.workers)]

    def stop(*_):
        for c in children:
            c.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [c.wait() for c in children]
    sys.exit(max(codes))


def cmd_worker(args):
    _apply_globals(args)
    if args.concurrency:
        os.environ["LETHE_WORKER_CONCURRENCY"] = str(args.concurrency)
        get_settings.cache_clear()
    from workers.celery_app import QUEUE, celery_app

    argv = ["worker", "-Q", QUEUE, "-c", str(get_settings().worker_concurrency), "--loglevel", args.loglevel,
            "--pool", args.pool, "-n", args.name]
    if get_settings().worker_max_tasks_per_child > 0:
        argv += ["--max-tasks-per-child", str(get_settings().worker_max_tasks_per_child)]
    celery_app.worker_main(argv)


def cmd_relay(args):
    """The outbox relay on its own (for deployments that set LETHE_RELAY_IN_API=false)."""
    _apply_globals(args)
    from app.main import create_app

    app = create_app(run_relay=False)
    relay = app.state.relay
    relay.start()
    print("outbox relay running; Ctrl-C stops it", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        relay.stop()


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


def cmd_serve(args):
    """API and worker together; with no keys set, generated keys are stored and printed."""
    import uvicorn

    _apply_globals(args)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.admin_keys and not settings.client_keys:
        keys = ensure_keys(settings.data_dir)
        os.environ["LETHE_ADMIN_KEYS"], os.environ["LETHE_CLIENT_KEYS"] = keys["admin"], keys["client"]
        get_settings.cache_clear()
        settings = get_settings()
    from app.migrate import upgrade

    upgrade(settings.db_url)
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "--data-dir", str(settings.data_dir), "worker",
                               "--loglevel", "warning"], env=os.environ.copy())
    try:
        example = None
        if not args.no_demo:
            try:
                example = _seed_demo(settings)
            except (ApiError, EngineError) as exc:  # e.g. the CLI demo already used this data directory
                print(f"demo model not set up ({exc.code}: {exc.detail}); serving anyway", flush=True)
        url = f"http://{args.host}:{args.port}"
        print(f"\nLethe is serving at {url}  (OpenAPI docs: {url}/docs)", flush=True)
        print(f"admin key:  {settings.admin_keys[0] if settings.admin_keys else '(none)'}")
        print(f"client key: {settings.client_keys[0] if settings.client_keys else '(none)'}")
        if example:
            model, owner = example
            key = settings.client_keys[0] if settings.client_keys else "<client key>"
            print(f"model {model!r} is training on the digits data; once GET {url}/v1/models/{model} says "
                  f"\"ready\", forget an owner with:")
            print(f"  curl -s -X POST {url}/v1/deletion-requests -H 'Authorization: Bearer {key}' "
                  f"-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' -d '{{\"owner_id\": \"{owner}\"}}'")
            print(f"  curl -s {url}/v1/deletion-requests/<id> -H 'Authorization: Bearer {key}'")
        print(flush=True)
        uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, log_level="warning")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _seed_demo(settings) -> tuple[str, str] | None:
    """On a fresh data directory: import digits and queue a small SISA model."""
    from app.datasets import service as datasets
    from app.db import make_engine, session_scope
    from app.models import service as models
    from app.models.schemas import ModelCreate
    from sqlalchemy.orm import sessionmaker
    from workers.engine.engine import Engine

    factory = sessionmaker(make_engine(settings.db_url), expire_on_commit=False)
    engine = Engine(settings.data_dir, store_url=settings.store_url, device="cpu")
    name, model = "digits", "digits-sisa"
    with session_scope(factory) as session:
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


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="run the API and a worker together (embedded SQLite defaults)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--no-demo", action="store_true", help="do not import digits and train a demo model")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="API processes (each with its own SO_REUSEPORT socket)")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--no-access-log", action="store_true")
    s.set_defaults(func=cmd_api)

    s = sub.add_parser("worker", help="run a Celery worker on the 'gpu' queue")
    s.add_argument("--concurrency", type=int, default=None, help="pool processes (env LETHE_WORKER_CONCURRENCY)")
    s.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    s.add_argument("--loglevel", default="info")
    s.add_argument("--name", default="lethe@%h")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("relay", help="run the outbox relay alone")
    s.set_defaults(func=cmd_relay)

    s = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    s.set_defaults(func=cmd_migrate)
