"""Versions as the API serves them: a reference (a number, ``latest`` or an alias) resolved
to one version, whether it may still be served (a revoked one may not), aliases, and
recording revocations (with the aliases they move) in the database."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import append
from app.errors import ApiError, not_found
from app.tables import ModelAliasRow, ModelVersionRow, utcnow
from app.webhooks.service import emit
from workers.engine.engine import Engine

ALIAS_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"
_ALIAS = re.compile(ALIAS_PATTERN)


@dataclass
class Resolved:
    """One version: its immutable store record and its row (revocation state)."""

    record: dict
    row: ModelVersionRow | None

    @property
    def revoked(self) -> bool:
        return self.row is not None and self.row.revoked_at is not None


def _row(session: Session, name: str, version: int, *, lock: bool = False) -> ModelVersionRow | None:
    stmt = select(ModelVersionRow).where(ModelVersionRow.model == name, ModelVersionRow.version == version)
    # Locked where an alias is set or a version revoked: the two serialise on the version's
    # row, so an alias can never land on a version revoked at the same moment.
    return session.scalars(stmt.with_for_update() if lock else stmt).first()


def parse_reference(session: Session, name: str, reference: str) -> int | str:
    """A version number, ``latest``, or the version an alias names."""
    if reference == "latest":
        return reference
    if reference.isascii() and reference.isdigit() and len(reference) <= 10 and int(reference) >= 1:
        return int(reference)
    alias = session.get(ModelAliasRow, (name, reference)) if _ALIAS.fullmatch(reference) else None
    if alias is None:
        raise ApiError(422, "invalid_version",
                       f"version must be a positive integer, 'latest' or an alias of the model, got {reference!r}")
    return alias.version


def resolve(*, session: Session, engine: Engine, name: str, reference: str) -> Resolved:
    record = engine.version(name, parse_reference(session, name, reference))
    return Resolved(record, _row(session, name, record["version"]))


def servable(version: Resolved) -> dict:
    """The record of a version that may be served (its weights, its predictions); a
    revoked one is gone for every caller: 410 with the version that replaced it."""
    if version.revoked:
        row = version.row
        instead = (f"use version {row.replaced_by}" if row.replaced_by is not None else
                   "unlearning it failed, so it was withdrawn and no version replaces it yet")
        raise ApiError(410, "version_revoked",
                       f"version {row.version} of {row.model!r} was revoked: it was trained on data erased since; "
                       f"{instead}", extra={"replaced_by": row.replaced_by})
    return version.record


# -- aliases -------------------------------------------------------------------------
def set_alias(*, session: Session, engine: Engine, actor: str, name: str, alias: str, version: int) -> ModelAliasRow:
    """Point ``alias`` at a live version of the model (created or moved)."""
    if not _ALIAS.fullmatch(alias) or alias == "latest":
        raise ApiError(422, "invalid_alias", f"an alias is 1-64 of a-z, 0-9, '_', '.', '-' starting with a letter, "
                       f"and not 'latest' (a number would read as a version); got {alias!r}")
    engine.version(name, version)  # version_not_found otherwise
    row = _row(session, name, version, lock=True)
    if row is not None and row.revoked_at is not None:
        raise ApiError(409, "version_revoked", f"version {version} of {name!r} is revoked; point {alias!r} at "
                       f"version {row.replaced_by} instead", extra={"replaced_by": row.replaced_by})
    current = session.get(ModelAliasRow, (name, alias))
    previous = current.version if current else None
    if current is None:
        current = ModelAliasRow(model=name, alias=alias, version=version, updated_at=utcnow())
        session.add(current)
    else:
        current.version, current.updated_at = version, utcnow()
    append(session, "alias.set", actor=actor, model=name, version=version,
           data={"alias": alias, "from": previous, "to": version})
    return current


def aliases(*, session: Session, name: str) -> list[ModelAliasRow]:
    return list(session.scalars(select(ModelAliasRow).where(ModelAliasRow.model == name)
                                .order_by(ModelAliasRow.alias)))


def delete_alias(*, session: Session, actor: str, name: str, alias: str) -> None:
    row = session.get(ModelAliasRow, (name, alias))
    if row is None:
        raise not_found("alias_not_found", f"model {name!r} has no alias {alias!r}")
    session.delete(row)
    append(session, "alias.deleted", actor=actor, model=name, version=row.version, data={"alias": alias})


# -- revocation ----------------------------------------------------------------------
def record_revocations(session: Session, *, actor: str, name: str, revocations: list[dict]) -> None:
    """Mark each revoked version (a store revocation record) in the database, once; audit
    it and move every alias on it to the replacing version, in the caller's transaction."""
    for r in revocations:
        row = _row(session, name, r["version"], lock=True)
        if row is None or row.revoked_at is not None:
            continue
        row.revoked_at = datetime.fromisoformat(r["revoked_at"])
        row.revoked_for, row.replaced_by = r["requests"], r["replaced_by"]
        append(session, "model.version_revoked", actor=actor, model=name, version=row.version,
               data={"replaced_by": row.replaced_by, "requests": row.revoked_for})
        emit(session, "model.version_revoked", {"model": name, "version": row.version, "revoked_at": row.revoked_at,
                                                "replaced_by": row.replaced_by, "requests": row.revoked_for})
        for alias in session.scalars(select(ModelAliasRow).where(
                ModelAliasRow.model == name, ModelAliasRow.version == row.version)):
            if row.replaced_by is None:  # withdrawn: the alias answers 410 until it is pointed elsewhere
                continue
            alias.version, alias.updated_at = row.replaced_by, utcnow()
            append(session, "alias.moved", actor=actor, model=name, version=row.replaced_by,
                   data={"alias": alias.alias, "from": row.version, "to": row.replaced_by,
                         "reason": "version_revoked"})
