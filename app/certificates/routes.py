"""Certificate routes: a completed request's signed certificate (its caller or an admin),
and the public keys that verify certificates (anyone)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.certificates import keys, service
from app.deps import CallerDep, EngineDep, SessionDep

router = APIRouter(tags=["certificates"])


class CertificateOut(BaseModel):
    certificate: str


@router.get("/v1/deletion-requests/{request_id}/certificate", response_model=CertificateOut)
def get_certificate(request_id: str, request: Request, session: SessionDep, engine: EngineDep,
                    caller: CallerDep) -> CertificateOut:
    """A JWS (compact, EdDSA/Ed25519, ``kid`` in the header) of what was erased for the
    request, the versions that replaced and revoked the owner's, their metrics, and the
    audit chain's head at completion. Verify it against ``/.well-known/jwks.json``."""
    claims = service.payload(session=session, engine=engine, caller=caller, request_id=request_id)
    return CertificateOut(certificate=service.sign(claims, request.app.state.signing_key))


@router.get("/.well-known/jwks.json")
def jwks(session: SessionDep) -> dict:
    """Every public key that ever signed a certificate (RFC 7517)."""
    return keys.jwks(session)
