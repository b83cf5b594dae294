"""One unit of work per HTTP request: committed before the answer is sent, rolled back
on error, and the outbox relay poked only after a commit that queued work."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.tables import JobRow, ModelRow, OutboxRow
from tests.service_helpers import A, TINY_MODEL, make_app


@pytest.fixture
def app(tmp_path):
    app = make_app(tmp_path / "lethe")
    pokes = []
    app.state.poke_relay = lambda: pokes.append(1)
    app.state.pokes = pokes
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
        app.state.client = client
        yield app


def test_a_write_is_committed_before_the_2xx_and_then_the_relay_is_poked(app):
    before = len(app.state.pokes)
    r = app.state.client.post("/v1/models", json=TINY_MODEL, headers=A)
    assert r.status_code == 202
    with app.state.sessionmaker() as s:
        assert s.get(ModelRow, "m") is not None and s.get(JobRow, r.json()["job"]["id"]) is not None
        assert s.scalars(select(OutboxRow.task)).all() == ["lethe.advance"]
    assert len(app.state.pokes) == before + 1


def test_a_failed_commit_is_never_answered_2xx_and_leaves_nothing(app, monkeypatch):
    def broken_commit(self):
        raise OperationalError("COMMIT", {}, Exception("the database went away"))

    monkeypatch.setattr(Session, "commit", broken_commit)
    before = len(app.state.pokes)
    r = app.state.client.post("/v1/models", json=TINY_MODEL, headers=A)
    monkeypatch.undo()
    assert r.status_code == 503 and r.json()["code"] == "database_unavailable"  # never a 2xx
    with app.state.sessionmaker() as s:
        assert s.get(ModelRow, "m") is None and not s.scalars(select(OutboxRow)).all()
    assert len(app.state.pokes) == before  # nothing queued, nothing to relay


def test_a_refused_request_rolls_back_its_work(app):
    assert app.state.client.post("/v1/models", json=TINY_MODEL, headers=A).status_code == 202
    r = app.state.client.post("/v1/models", json=TINY_MODEL, headers=A)  # same name again
    assert r.status_code == 409 and r.json()["code"] == "model_exists"
    with app.state.sessionmaker() as s:
        assert len(s.scalars(select(JobRow)).all()) == 1


def test_a_failed_statement_never_carries_its_parameters_into_an_error_or_a_log(tmp_path, caplog):
    """Owner ids and reasons are statement parameters: an error message (and so a log
    line) shows the statement, never them."""
    import logging

    from sqlalchemy import text

    from app.db import make_db_engine

    caplog.set_level(logging.DEBUG)
    secret = "-".join(["owner", "secret", "42"])  # (not spelled out: a traceback quotes source lines)
    engine = make_db_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (owner TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO t VALUES (:o)"), {"o": secret})
    with pytest.raises(Exception) as caught:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (:o)"), {"o": secret})
    logging.getLogger("lethe.api").exception("unhandled", exc_info=caught.value)
    assert "INSERT INTO t" in str(caught.value)
    assert secret not in str(caught.value) and secret not in caplog.text
