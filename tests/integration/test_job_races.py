"""Races between job steps on PostgreSQL, where they happen (SQLite serialises every
writer): a claim and a job's failure must not interleave.

The API runs in-process on a fresh PostgreSQL database; the worker's steps are called
directly from two sessions, so the interleaving is chosen, not hoped for."""
from __future__ import annotations

import threading
import time
import warnings

import pytest

from app.jobs import outcomes
from app.jobs.service import claim
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from app.statuses import JobStatus, OutcomeStatus
from app.tables import DeletionOutcomeRow, JobRow
from tests.integration.conftest import require_postgres, scratch_database
from tests.service_helpers import A, ADMIN, C, CLIENT, TINY_MODEL, an_owner, run_worker_inline

warnings.filterwarnings("ignore", message=".*httpx.*")
from fastapi.testclient import TestClient  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_ready(tmp_path):
    """The API on a fresh PostgreSQL database, digits imported, a tiny model trained."""
    require_postgres("the job race tests")
    with scratch_database("lethe_race") as url:
        upgrade(url)
        settings = Settings(data_dir=tmp_path / "lethe", admin_keys=[ADMIN], client_keys=[CLIENT], device="cpu",
                            database_url=url, broker_url=None, result_backend=None)
        settings.data_dir.mkdir(parents=True)
        app = create_app(settings, run_relay=False)
        with TestClient(app) as client:
            client.app_ = app
            assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"},
                               headers=A).status_code == 201
            assert client.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
            run_worker_inline(app)
            yield client
        app.state.sessionmaker.kw["bind"].dispose()


def test_a_claim_waits_for_a_failing_job_and_never_attaches_requests_to_it(pg_ready):
    """A second worker's claim reads the job while its own worker is failing it. The claim
    waits for the failure to commit and then starts a new job for what is waiting; it
    never attaches a new request to the failed job (which left it running for ever)."""
    owners = [o["owner_id"] for o in pg_ready.get("/v1/datasets/digits/owners?limit=2", headers=A).json()["owners"]]
    first = pg_ready.post("/v1/deletion-requests", json={"owner_id": owners[0]}, headers=C).json()["id"]
    factory = pg_ready.app_.state.sessionmaker
    with factory() as s:
        job = claim(s, "m", lease_seconds=60)
        s.commit()
    second = pg_ready.post("/v1/deletion-requests", json={"owner_id": owners[1]}, headers=C).json()["id"]

    failing = factory()
    failing.get(JobRow, job.job_id, with_for_update=True)  # the failing worker holds the job
    taken = []
    other = threading.Thread(target=lambda: taken.append(_claim_and_commit(factory)))
    other.start()
    time.sleep(1.0)
    assert other.is_alive(), "the claim did not wait for the job's failure"
    outcomes.fail(failing, job.job_id, "transient_fault: the database went away", transient=True,
                  backoff_seconds=60)
    failing.commit()
    failing.close()
    other.join(timeout=30)

    (fresh,) = taken
    assert fresh is not None and fresh.job_id != job.job_id and fresh.request_ids == [second]
    with factory() as s:
        assert s.get(JobRow, job.job_id).status == JobStatus.FAILED
        left = s.get(DeletionOutcomeRow, (first, "m"))
        assert left.status == OutcomeStatus.PENDING and left.job_id is None  # its retry waits
        taken_now = s.get(DeletionOutcomeRow, (second, "m"))
        assert taken_now.status == OutcomeStatus.RUNNING and taken_now.job_id == fresh.job_id


def _claim_and_commit(factory):
    with factory() as s:
        got = claim(s, "m", lease_seconds=60)
        s.commit()
        return got


def test_the_first_claim_still_wins_the_lease_on_postgres(pg_ready):
    """With the job row locked, a redelivered advance during a running job still finds
    the lease taken (the lock adds no second owner)."""
    pg_ready.post("/v1/deletion-requests", json={"owner_id": an_owner(pg_ready)}, headers=C)
    factory = pg_ready.app_.state.sessionmaker
    assert _claim_and_commit(factory) is not None
    assert _claim_and_commit(factory) is None
