"""Which failures are transient — a dropped or refused database connection, a
serialization failure or deadlock, a broker or network timeout — and how a failure
reads as a job's reason: a code and one sentence, never SQL or a stack trace.

A transient failure is retried (by the task, then by the job with back-off) and never
counts against ``LETHE_MAX_ATTEMPTS``: a deletion must not fail for good because the
database blinked.
"""
from __future__ import annotations

from sqlalchemy import exc as sa

def _transient_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from redis import exceptions as redis_errors

        found += [redis_errors.ConnectionError, redis_errors.TimeoutError]
    except ImportError:  # pragma: no cover - redis is installed with Celery's extra
        pass
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        found.append(KombuOperationalError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


_TRANSIENT_OTHER = _transient_types()
# What may carry a transient fault up to an HTTP handler.
FAULT_TYPES: tuple[type[BaseException], ...] = (sa.SQLAlchemyError, *_TRANSIENT_OTHER)


# SQLSTATEs of faults that go away by themselves: the connection dropped or was refused
# (class 08), a serialization failure or deadlock, the server shutting down or
# restarting (57P01-57P03), too many connections. Anything else the database says — a
# full disk, a cancelled statement, a constraint — is not retried as transient.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300"})
# SQLite says "database is locked" while another writer holds it; nothing else it says
# goes away by waiting.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked")


def _transient_database_error(exc: sa.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state:
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    if type(orig).__module__.startswith("sqlite3"):
        return any(m in str(orig).lower() for m in _SQLITE_TRANSIENT)
    # A driver error without a SQLSTATE is a connection that failed before the server
    # answered (refused, reset, timed out).
    return isinstance(exc, (sa.OperationalError, sa.InterfaceError))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) is a fault that goes away by
    itself. Only explicit causes (``raise ... from``) are followed: an error raised
    while handling a transient one is its own failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa.DBAPIError):
            return _transient_database_error(exc)
        if isinstance(exc, (sa.DisconnectionError, sa.TimeoutError)) or isinstance(exc, _TRANSIENT_OTHER):
            return True
        exc = exc.__cause__
    return False


def describe(exc: BaseException) -> str:
    """``exc`` as a job's failure reason: ``code: sentence``."""
    from models_store import LetheError

    if isinstance(exc, LetheError):
        return f"{exc.code}: {exc.detail}"
    if is_transient(exc):
        return (f"transient_fault: the database, broker or network failed during the job "
                f"({type(exc).__name__}); it is retried")
    if isinstance(exc, sa.SQLAlchemyError):
        return f"database_error: a database statement failed ({type(exc).__name__})"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"internal_error: {type(exc).__name__}" + (f": {first}" if first else "")
