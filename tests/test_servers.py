"""The test suite's own PostgreSQL and Redis (tests/servers.py): started when none answers
at the configured URL, gone when the session that started them ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import servers

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, psycopg
from tests import servers
pg, redis = servers.postgres_url(), servers.redis_url()
with psycopg.connect(pg) as conn:
    conn.execute("select 1")
print(json.dumps({"pg": pg, "redis": redis, "redis_up": servers.redis_answers(redis)}))
"""


def test_throwaway_servers_start_when_none_answers_and_stop_with_the_session():
    dead_pg, dead_redis = f"postgresql://postgres@127.0.0.1:{servers.free_port()}/test", \
        f"redis://127.0.0.1:{servers.free_port()}/0"
    env = {**os.environ, "LETHE_TEST_DATABASE_URL": dead_pg, "LETHE_TEST_BROKER_URL": dead_redis}
    before = set(Path("/tmp").glob("lethe-test-*"))
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout.strip().splitlines()[-1])
    assert started["pg"] != dead_pg and started["redis"] != dead_redis and started["redis_up"]
    # the session is over: both are stopped and their directories removed
    assert not servers.postgres_answers(started["pg"]) and not servers.redis_answers(started["redis"])
    assert set(Path("/tmp").glob("lethe-test-*")) <= before


def test_a_server_that_answers_is_used_as_it_is():
    pg, redis = servers.postgres_url(), servers.redis_url()  # whatever this session uses
    env = {**os.environ, "LETHE_TEST_DATABASE_URL": pg, "LETHE_TEST_BROKER_URL": redis}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"pg": pg, "redis": redis, "redis_up": True}
    assert servers.postgres_answers(pg) and servers.redis_answers(redis)  # and left running
