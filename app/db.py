"""Database engine and sessions: one unit of work per HTTP request, per batch of intake
and per step of a task.

Service functions never commit. Whoever opens the session owns its transaction: the
API's session dependency (``deps.get_session``), the intake writer, and
:func:`session_scope` for the job flow and the relay. Each commits once on success and
rolls back on error, so a request row, its audit event and its outbox row land together.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver installed with Lethe."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def make_db_engine(url: str, pool_size: int = 4) -> Engine:
    """A SQLAlchemy engine for ``url`` (PostgreSQL, or a SQLite file for the embedded default).

    Statement parameters (owner ids, free-text reasons) never appear in an error message
    or a log line (``hide_parameters``)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
            # Deleted content (an owner's id, a destroyed evidence key) is overwritten
            # with zeros, not left in free pages.
            dbapi_conn.execute("PRAGMA secure_delete=ON")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Take the write lock up front: the API and the worker are separate processes,
            # and a read-then-write transaction would otherwise fail to upgrade its lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A small pool per process: appends to the audit chain are serialised, and more
    # transactions in flight than cores only queue on that lock while holding the GIL.
    # Pre-ping: a connection the server dropped (a restart, a terminated backend) is
    # replaced before use instead of failing the request that drew it.
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_recycle=1800,
                         pool_pre_ping=True, hide_parameters=True)


def make_sessionmaker(url: str, pool_size: int = 4) -> sessionmaker[Session]:
    return sessionmaker(make_db_engine(url, pool_size), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits once on success and rolls back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
