"""Database engine and sessions: one unit of work per HTTP request or task.

Service functions never commit; the session scope commits once on success and rolls
back on error, so a request row, its audit event and its outbox row land together.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings


def normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver installed with Lethe."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def make_engine(url: str, pool_size: int = 4) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Take the write lock up front: the API and the worker are separate processes,
            # and a read-then-write transaction would otherwise fail to upgrade its lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A small pool per process: appends to the audit chain are serialised, and more
    # transactions in flight than cores only queue on that lock while holding the GIL.
    # No pre-ping (it costs a round trip per request); connections are recycled instead.
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_recycle=1800)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().db_url, get_settings().db_pool_size)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """A session that commits once on success and rolls back on any error."""
    session = (factory or get_sessionmaker())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
