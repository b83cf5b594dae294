"""Anchors of the audit chain: its head (seq and hash), signed with the service's
Ed25519 key and kept in the model store (``audit/anchors/<seq>.jws``), outside the
database that holds the chain.

The chain's hashes catch an edited or removed event in the middle, but a tail cut off
the end leaves a shorter chain that still links up. An anchor remembers how far the
chain reached: a chain that now ends before its latest anchor, or whose event at the
anchored seq has another hash, is reported as truncated or rewritten. Someone who can
rewrite the database cannot forge an anchor without the signing key. The API anchors
the head whenever it moved, each reconcile round (``LETHE_RECONCILE_INTERVAL``); each
deletion certificate carries a signed head too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import ChainReport, verify_chain
from app.certificates.keys import SigningKey, jwks
from app.tables import AuditEventRow
from models_store import ModelStore


@dataclass
class Anchor:
    seq: int
    head_hash: str
    at: str
    kid: str


def anchor(session: Session, store: ModelStore, key: SigningKey) -> Anchor | None:
    """Sign and keep the chain's current head, unless the latest anchor already has it."""
    head = session.execute(select(AuditEventRow.seq, AuditEventRow.hash)
                           .order_by(AuditEventRow.seq.desc()).limit(1)).first()
    if head is None:
        return None
    latest = read_latest(session, store)
    if latest is not None and latest.seq >= head.seq:
        return None
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    token = jwt.encode({"typ": "audit-anchor", "seq": head.seq, "head_hash": head.hash, "at": at},
                       key.private, algorithm="EdDSA", headers={"kid": key.kid})
    store.put_anchor(head.seq, token)
    return Anchor(head.seq, head.hash, at, key.kid)


def read_latest(session: Session, store: ModelStore) -> Anchor | None:
    """The latest anchor, its signature checked against every published key (ValueError
    if it does not check out: an anchor that was tampered with is no anchor)."""
    token = store.latest_anchor()
    if token is None:
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        known = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks(session)).keys}
        if kid not in known:
            raise ValueError(f"the latest audit anchor is signed by an unknown key {kid!r}")
        claims = jwt.decode(token, known[kid].key, algorithms=["EdDSA"])
    except jwt.PyJWTError as exc:
        raise ValueError(f"the latest audit anchor does not verify: {exc}") from None
    return Anchor(int(claims["seq"]), claims["head_hash"], claims["at"], kid)


@dataclass
class AnchoredReport(ChainReport):
    anchored_seq: int | None = None
    truncated: bool = False


def verify(session: Session, store: ModelStore) -> AnchoredReport:
    """Recompute the chain (``verify_chain``) and hold it against its latest anchor."""
    base = verify_chain(session)
    report = AnchoredReport(**base.__dict__)
    try:
        latest = read_latest(session, store)
    except ValueError as exc:
        return replace(report, ok=False, problem=str(exc))
    if latest is None:
        return report
    report.anchored_seq = latest.seq
    if not base.ok:
        return report
    if base.events < latest.seq:
        return replace(report, ok=False, truncated=True, first_bad_seq=base.events + 1,
                       problem=f"truncated: the chain ends at event {base.events}, but it was anchored at event "
                               f"{latest.seq} ({latest.at})")
    at_anchor = session.scalar(select(AuditEventRow.hash).where(AuditEventRow.seq == latest.seq))
    if at_anchor != latest.head_hash:
        return replace(report, ok=False, first_bad_seq=latest.seq,
                       problem=f"event {latest.seq} does not match its anchor ({latest.at}): the chain was rewritten")
    return report
