"""A real stack for integration tests: a fresh PostgreSQL database, Redis, a ``celery
worker`` process and a ``uvicorn`` process, all talking over real connections. The
PostgreSQL and Redis are the configured ones, or throwaway ones (``tests.servers``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest

from tests.servers import free_port as _free_port
from tests.servers import postgres_url, redis_url
from tests.service_helpers import ADMIN, CLIENT, CLIENT2

ROOT = Path(__file__).resolve().parents[2]
APP_PASSWORD = "lethe:it%app'pw"  # characters SQL text and URLs treat specially


def _as_role(url: str, role: str, password: str) -> str:
    """``url`` with its user replaced by ``role`` (and ``password``)."""
    scheme, rest = url.split("://", 1)
    host = rest.split("@", 1)[1] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{role}:{quote(password, safe='')}@{host}"


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db_name = f"lethe_it_{uuid.uuid4().hex[:10]}"
        self.db_url = postgres_url().rsplit("/", 1)[0] + "/" + self.db_name  # the owner: migrations, test set-up
        # The API and the worker connect as the application's role, as in production.
        self.app_db_url = _as_role(self.db_url, "lethe_app", APP_PASSWORD)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LETHE_DATA_DIR": str(tmp / "data"),
            "LETHE_DATABASE_URL": self.app_db_url,
            "LETHE_BROKER_URL": redis_url(),
            "LETHE_ADMIN_KEYS": ADMIN,
            "LETHE_CLIENT_KEYS": f"{CLIENT},{CLIENT2}",
            "LETHE_DEVICE": "cpu",
            "LETHE_LEASE_SECONDS": "4",
            "LETHE_RECONCILE_INTERVAL": "1",
            "LETHE_RETRY_BACKOFF_SECONDS": "1",
            "LETHE_WORKER_METRICS_PORT": str(_free_port()),
            "LETHE_LOG_FORMAT": "json",
            "LETHE_WEBHOOK_ALLOW_PRIVATE": "true",  # the tests' receiver listens on loopback
            "LETHE_WEBHOOK_RETRY_SECONDS": "1",
            "LETHE_WEBHOOK_INTERVAL": "0.2",
            "PYTHONUNBUFFERED": "1",
        }
        self.worker: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.worker_logs: list[Path] = []

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env={**self.env, **env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    def start_worker(self) -> None:
        log = self.tmp / f"worker-{len(self.worker_logs)}.log"
        self.worker_logs.append(log)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", "2", "--loglevel", "info",
             "--name", f"it-{uuid.uuid4().hex[:6]}@%h"],
            env=self.env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool: a crash, not a shutdown."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=10)

    def start_api(self) -> None:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(self.port)],
            env=self.env, cwd=ROOT, stdout=(self.tmp / "api.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.api.poll() is not None:
                raise RuntimeError("uvicorn exited:\n" + (self.tmp / "api.log").read_text())
            time.sleep(0.3)
        raise RuntimeError("uvicorn did not become ready:\n" + (self.tmp / "api.log").read_text())

    def kill_api(self) -> None:
        """SIGKILL the API process: a crash, not a shutdown."""
        os.killpg(self.api.pid, signal.SIGKILL)
        self.api.wait(timeout=10)

    def stop(self) -> None:
        for proc in (self.api, self.worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    def worker_log(self) -> str:
        return "".join(p.read_text() for p in self.worker_logs if p.exists())


def _admin_conn():
    return psycopg.connect(postgres_url(), autocommit=True)


@contextmanager
def scratch_database(prefix: str):
    """A fresh, empty PostgreSQL database for one test; its URL (as the owner). Dropped
    afterwards, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url().rsplit("/", 1)[0] + "/" + name
    finally:
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_postgres(who: str) -> None:
    """Fail (not skip) when the test PostgreSQL does not answer."""
    try:
        with _admin_conn():
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"{who} need PostgreSQL at {postgres_url()}: {exc}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_postgres("integration tests")
    s = Stack(tmp_path_factory.mktemp("stack"))
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{s.db_name}"')
    try:
        migrated = s.run("migrate", LETHE_DATABASE_URL=s.db_url, LETHE_APP_DB_PASSWORD=APP_PASSWORD)
        assert migrated.returncode == 0, migrated.stderr
        s.start_worker()
        s.start_api()
        yield s
    finally:
        s.stop()
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{s.db_name}" WITH (FORCE)')


def poll(fn, done, timeout: float = 180, every: float = 0.3):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if done(value):
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out; last value: {value}")
        time.sleep(every)
