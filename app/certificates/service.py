"""A deletion certificate: what was erased for one request, which versions replaced and
revoked which, how each was verified, and where the audit chain stood — signed with the
service's Ed25519 key as a JWS (compact, ``alg: EdDSA``, ``kid`` in the header) that
any JOSE library checks against ``/.well-known/jwks.json``."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.callers import Caller
from app.certificates.keys import SigningKey
from app.deletions import service as deletions
from app.errors import ApiError
from app.models.service import for_caller
from app.statuses import OutcomeStatus, RequestStatus
from app.tables import AuditEventRow, ModelRow, ModelVersionRow
from workers.engine.engine import Engine

METRICS = ("ua", "ra", "ta", "mia_efficacy", "forget_size")


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).isoformat() if at else None


def payload(*, session: Session, engine: Engine, caller: Caller, request_id: str) -> dict:
    """The certificate's claims for a completed request (409 ``request_not_completed`` before)."""
    request = deletions.get(session=session, caller=caller, request_id=request_id)
    if request.status != RequestStatus.COMPLETED:
        raise ApiError(409, "request_not_completed", f"deletion request {request_id!r} is {request.status}; "
                       "its certificate exists once it is completed")
    models, datasets = [], {}
    for outcome in deletions.outcomes(session=session, request_id=request.id):
        if outcome.status != OutcomeStatus.COMPLETED:
            continue
        dataset = session.get(ModelRow, outcome.model).dataset
        if dataset not in datasets:
            datasets[dataset] = [{"sample_count": len(e.sample_ids), "sample_ids_digest": e.digest,
                                  "erased_at": e.erased_at} for e in engine.dataset(dataset).erasures(request.owner_id)]
        version = session.scalars(select(ModelVersionRow).where(
            ModelVersionRow.model == outcome.model, ModelVersionRow.version == outcome.version)).first()
        revoked = session.scalars(select(ModelVersionRow).where(
            ModelVersionRow.model == outcome.model, ModelVersionRow.replaced_by == outcome.version)
            .order_by(ModelVersionRow.version)).all()
        metrics = outcome.metrics or {}
        record = engine.version(outcome.model, outcome.version)
        shown = for_caller(session=session, caller=caller, record=record)  # no sha over other callers' owners
        models.append({
            "model": outcome.model,
            "version": outcome.version,
            "record_sha256": shown["record_sha256"],
            "manifest_digest": version.manifest_digest if version else None,
            "exact": record.get("exact", True),
            "method_requested": outcome.method,
            "method": version.method if version else None,
            "metrics": {k: metrics.get(k) for k in METRICS},
            "forget_metrics_unavailable": metrics.get("forget_metrics_unavailable"),
            "revoked_versions": [{"version": r.version, "revoked_at": _iso(r.revoked_at),
                                  "purged_at": _iso(r.purged_at)} for r in revoked],
        })
    completed = session.scalars(select(AuditEventRow).where(
        AuditEventRow.request_id == request.id, AuditEventRow.kind == "request.completed")
        .order_by(AuditEventRow.seq.desc())).first()
    return {
        "iss": "lethe",
        "typ": "deletion-certificate",
        "iat": int(datetime.now(timezone.utc).timestamp()),
        "request_id": request.id,
        "owner_id_sha256": hashlib.sha256(request.owner_id.encode()).hexdigest(),
        "accepted_at": _iso(request.created_at),
        "completed_at": _iso(request.completed_at),
        "due_at": _iso(request.due_at),
        # The owner's sealed rows (the forget set every model was measured on), destroyed
        # with their key when the request completed.
        "evidence": {"held_since": _iso(request.evidence_held_at), "destroyed_at": _iso(request.evidence_destroyed_at),
                     "reason": request.evidence_destroyed_reason},
        "datasets": [{"dataset": d, "erasures": e} for d, e in sorted(datasets.items())],
        "models": models,
        "audit": {"seq": completed.seq, "head_hash": completed.hash} if completed else None,
    }


def sign(claims: dict, key: SigningKey) -> str:
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "JWT"})
