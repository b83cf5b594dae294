"""Which failures are transient — a dropped or refused database connection, a
serialization failure or deadlock, a broker or network timeout — and how a failure
reads as a job's reason: a code and one sentence, never SQL or a stack trace.

A transient failure is retried (by the task, then by the job with back-off) and never
counts against ``LETHE_MAX_ATTEMPTS``: a deletion must not fail for good because the
database blinked.
"""
from __future__ import annotations

from sqlalchemy import exc as sa

_TRANSIENT_SA = (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)


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


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a fault that goes away by itself."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, _TRANSIENT_SA) or isinstance(exc, _TRANSIENT_OTHER):
            return True
        exc = exc.__cause__ or exc.__context__
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
