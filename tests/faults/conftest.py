"""The fault suite's stack: like the integration stack (a fresh PostgreSQL database, a
``celery worker`` process, a ``uvicorn`` process), but with a Redis server of its own
that the tests stop, restart and flush. No test touches a server it did not start;
PostgreSQL faults terminate only the connections to the suite's own database."""
from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.conftest import APP_PASSWORD, Stack, _admin_conn, poll, require_postgres
from tests.servers import RedisServer
from tests.service_helpers import A

TINY = {"dataset": "digits", "architecture": "mlp", "strategy": {"kind": "sisa", "shards": 3, "slices": 1},
        "training": {"epochs": 2, "batch_size": 64}}


class FaultStack(Stack):
    def __init__(self, tmp):
        super().__init__(tmp)
        self.redis = RedisServer(tmp, appendonly=True)
        self.env["LETHE_BROKER_URL"] = self.redis.url
        self.env["LETHE_LEASE_SECONDS"] = "6"

    def terminate_db_connections(self) -> int:
        """pg_terminate_backend on every connection to this suite's database but ours."""
        with _admin_conn() as conn:
            return len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,)).fetchall())

    def up(self) -> None:
        """Create the database, start Redis, migrate as the owner, start the worker and the API."""
        with _admin_conn() as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.redis.start()
        migrated = self.run("migrate", LETHE_DATABASE_URL=self.db_url, LETHE_APP_DB_PASSWORD=APP_PASSWORD)
        assert migrated.returncode == 0, migrated.stderr
        self.start_worker()
        self.start_api()

    def down(self) -> None:
        self.stop()
        self.redis.stop()
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def kill_api(self) -> None:
        import os
        import signal

        os.killpg(self.api.pid, signal.SIGKILL)
        self.api.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_postgres("the fault suite and the soak")
    s = FaultStack(tmp_path_factory.mktemp("faults"))
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(stack, http):
    """digits imported and a small SISA model trained; its name."""
    # Many small owners: the suite erases a fresh one for each of its ~150 requests.
    assert http.post("/v1/datasets", json={"name": "digits", "source": "digits", "owners": 700},
                     headers=A).status_code == 201
    assert http.post("/v1/models", json={"name": "m", **TINY}, headers=A).status_code == 202
    m = poll(lambda: http.get("/v1/models/m", headers=A).json(), lambda m: m["status"] in ("ready", "failed"))
    assert m["status"] == "ready", m
    return "m"


def unique_id() -> str:
    return uuid.uuid4().hex[:8]
