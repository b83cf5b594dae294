"""Every migration goes up and down on PostgreSQL (and on SQLite), and the application
role keeps its limits after a round trip."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic import command

from app.migrate import alembic_config
from tests.integration.conftest import PG, _admin_conn

pytestmark = pytest.mark.integration


def _round_trip(url: str) -> None:
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")


def test_migrations_round_trip_on_postgres():
    name = f"lethe_mig_{uuid.uuid4().hex[:10]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG.rsplit("/", 1)[0] + "/" + name
    try:
        _round_trip(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET ROLE lethe_app")
            conn.execute("SELECT count(*) FROM audit_events")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM audit_events")
    finally:
        with _admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_round_trip_on_sqlite(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'lethe.sqlite'}")
