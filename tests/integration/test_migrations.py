"""Every migration goes up and down on PostgreSQL (and on SQLite), and the application
role keeps its limits after a round trip."""
from __future__ import annotations

import psycopg
import pytest
from alembic import command

from app.migrate import alembic_config
from tests.integration.conftest import scratch_database

pytestmark = pytest.mark.integration


def _round_trip(url: str) -> None:
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")


def test_migrations_round_trip_on_postgres():
    with scratch_database("lethe_mig") as url:
        _round_trip(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET ROLE lethe_app")
            conn.execute("SELECT count(*) FROM audit_events")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM audit_events")


def test_migrations_round_trip_on_sqlite(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'lethe.sqlite'}")
