"""Which failures count as transient (retried, never ending a deletion) and which do not."""
from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy import exc as sa

from app import faults


def wrapped(orig: BaseException, kind=sa.OperationalError) -> sa.DBAPIError:
    return kind("SELECT 1", {}, orig)


@pytest.mark.parametrize("orig", [pg.AdminShutdown(), pg.SerializationFailure(), pg.DeadlockDetected(),
                                  pg.TooManyConnections(), pg.ConnectionFailure(), pg.CannotConnectNow(),
                                  psycopg.OperationalError("connection refused")])
def test_connection_loss_serialization_and_deadlock_are_transient(orig):
    assert faults.is_transient(wrapped(orig))


@pytest.mark.parametrize("orig", [pg.DiskFull(), pg.QueryCanceled(), pg.UndefinedTable(), pg.InsufficientPrivilege()])
def test_what_the_database_refuses_for_good_is_not_transient(orig):
    kind = sa.ProgrammingError if isinstance(orig, (pg.UndefinedTable, pg.InsufficientPrivilege)) else sa.OperationalError
    assert not faults.is_transient(wrapped(orig, kind))
    assert faults.describe(wrapped(orig, kind)).startswith("database_error: ")


def test_sqlite_only_a_locked_database_is_transient():
    assert faults.is_transient(wrapped(sqlite3.OperationalError("database is locked")))
    assert not faults.is_transient(wrapped(sqlite3.OperationalError("no such table: jobs")))
    assert not faults.is_transient(wrapped(sqlite3.OperationalError("disk I/O error")))


def test_an_invalidated_connection_is_transient_whatever_it_said():
    err = wrapped(pg.QueryCanceled())
    err.connection_invalidated = True
    assert faults.is_transient(err)


def test_only_explicit_causes_are_followed():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise KeyError("a bug in the handler")  # raised while handling: its own failure
    except KeyError as exc:
        assert not faults.is_transient(exc)
    try:
        raise RuntimeError("step failed") from ConnectionResetError("reset")
    except RuntimeError as exc:
        assert faults.is_transient(exc)


def test_transient_reasons_show_no_sql():
    reason = faults.describe(wrapped(pg.AdminShutdown("terminating connection: SELECT secret FROM t")))
    assert reason.startswith("transient_fault: ") and "SELECT" not in reason
