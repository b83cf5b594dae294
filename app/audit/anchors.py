"""Anchors of the audit chain: its head (seq and hash), signed with the service's
Ed25519 key and kept in the model store (``audit/anchors/<seq>.jws``), outside the
database that holds the chain.

The chain's hashes catch an edited or removed event in the middle, but a tail cut off
the end leaves a shorter chain that still links up. An anchor remembers how far the
chain reached: a chain that now ends before its latest anchor, or whose event at the
anchored seq has another hash, is reported as truncated or rewritten. Someone who can
rewrite the database cannot forge an anchor without the signing key.

- Anchors are checked against the public keys kept beside them in the store
  (``audit/keys/<kid>.jwk``) and the service's own key, never against the database's
  ``signing_keys``: whoever can write the database must not be able to add a key.
- Each anchor names the one before it (``prev``), and a new head is signed only after
  the events since the previous anchor link up from it: a rewritten chain is reported,
  never signed again.
- An anchor file that does not verify is reported by ``verify`` and skipped by
  ``anchor``: garbage in the store cannot stop anchoring.
- A chain with events older than ``unanchored_grace`` and no anchor at all is reported:
  the anchors were removed (or the service never anchored).

The API anchors the head whenever it moved, each reconcile round
(``LETHE_RECONCILE_INTERVAL``); each deletion certificate carries a signed head too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import ChainReport, event_hash, verify_chain
from app.certificates.keys import SigningKey
from app.tables import AuditEventRow
from models_store import ModelStore

log = logging.getLogger("lethe.audit")

UNANCHORED_GRACE = timedelta(minutes=10)


@dataclass
class Anchor:
    seq: int
    head_hash: str
    at: str
    kid: str


class ChainRewritten(Exception):
    """The chain no longer holds what its latest anchor signed."""


def trusted_keys(store: ModelStore, key: SigningKey | None = None) -> dict[str, dict]:
    """The public keys anchors may be signed with: those kept in the store beside the
    anchors, and ``key`` (the service's own)."""
    keys = store.anchor_keys()
    if key is not None:
        keys[key.kid] = key.public_jwk
    return keys


def _decode(token: str, keys: dict[str, dict]) -> Anchor:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in keys:
            raise ValueError(f"it is signed by an unknown key {kid!r}")
        claims = jwt.decode(token, jwt.PyJWK.from_dict(keys[kid]).key, algorithms=["EdDSA"])
        if claims.get("typ") != "audit-anchor":
            raise ValueError("it is not an audit anchor")
        return Anchor(int(claims["seq"]), str(claims["head_hash"]), str(claims["at"]), kid)
    except (jwt.PyJWTError, KeyError, TypeError) as exc:
        raise ValueError(f"it does not verify: {exc}") from None


def latest(store: ModelStore, keys: dict[str, dict]) -> tuple[Anchor | None, list[str]]:
    """The latest anchor that verifies, and a problem for each anchor file above it that
    does not (or whose seq is not the one its file is named by)."""
    problems = []
    for seq in store.anchor_seqs():
        try:
            found = _decode(store.anchor(seq), keys)
            if found.seq != seq:
                raise ValueError(f"it anchors event {found.seq}, not {seq}")
            return found, problems
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"the audit anchor at event {seq} is not valid: {exc}")
    return None, problems


def _check_since(session: Session, anchor: Anchor) -> int:
    """The events from ``anchor``'s seq on still hold what it signed and link up from it;
    the seq of the head. Raises ChainRewritten."""
    expected, prev = anchor.seq, None
    rows = session.scalars(select(AuditEventRow).where(AuditEventRow.seq >= anchor.seq)
                           .order_by(AuditEventRow.seq).execution_options(yield_per=2000))
    for row in rows:
        if row.seq != expected:
            raise ChainRewritten(f"event {expected} is missing")
        if row.seq == anchor.seq and row.hash != anchor.head_hash:
            raise ChainRewritten(f"event {row.seq} does not match its anchor ({anchor.at})")
        if row.seq != anchor.seq and row.prev_hash != prev:
            raise ChainRewritten(f"event {row.seq} does not link to event {row.seq - 1}")
        if event_hash(row) != row.hash:
            raise ChainRewritten(f"event {row.seq} was edited")
        prev, expected = row.hash, expected + 1
    if expected == anchor.seq:
        raise ChainRewritten(f"the chain ends before event {anchor.seq}, where it was anchored ({anchor.at})")
    return expected - 1


def anchor(session: Session, store: ModelStore, key: SigningKey) -> Anchor | None:
    """Sign and keep the chain's current head, unless the latest anchor already has it.
    The events since the latest anchor must link up from it (ChainRewritten if not:
    a rewritten chain is not signed again)."""
    head = session.execute(select(AuditEventRow.seq, AuditEventRow.hash)
                           .order_by(AuditEventRow.seq.desc()).limit(1)).first()
    if head is None:
        return None
    store.put_anchor_key(key.kid, key.public_jwk)
    previous, problems = latest(store, trusted_keys(store, key))
    for problem in problems:
        log.warning("%s; it is skipped", problem)
    if previous is not None:
        if previous.seq >= head.seq:
            if previous.seq > head.seq:
                raise ChainRewritten(f"the chain ends at event {head.seq}, but it was anchored at event "
                                     f"{previous.seq} ({previous.at})")
            _check_since(session, previous)
            return None
        _check_since(session, previous)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    claims = {"typ": "audit-anchor", "seq": head.seq, "head_hash": head.hash, "at": at,
              "prev": {"seq": previous.seq, "head_hash": previous.head_hash} if previous else None}
    store.put_anchor(head.seq, jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid}))
    return Anchor(head.seq, head.hash, at, key.kid)


@dataclass
class AnchoredReport(ChainReport):
    anchored_seq: int | None = None
    truncated: bool = False


def verify(session: Session, store: ModelStore, key: SigningKey | None = None, *,
           unanchored_grace: timedelta = UNANCHORED_GRACE) -> AnchoredReport:
    """Recompute the chain (``verify_chain``) and hold it against its latest anchor."""
    base = verify_chain(session)
    report = AnchoredReport(**base.__dict__)
    found, problems = latest(store, trusted_keys(store, key))
    if problems:
        return replace(report, ok=False, anchored_seq=found.seq if found else None, problem=problems[0])
    if found is None:
        first_at = session.scalar(select(AuditEventRow.at).where(AuditEventRow.seq == 1))
        if first_at is not None and _age(first_at) > unanchored_grace:
            return replace(report, ok=False,
                           problem=f"no audit anchor was found, though the chain began at {first_at}: the anchors "
                                   f"were removed from the store, or the service never anchored its chain")
        return report
    report.anchored_seq = found.seq
    if not base.ok:
        return report
    if base.events < found.seq:
        return replace(report, ok=False, truncated=True, first_bad_seq=base.events + 1,
                       problem=f"truncated: the chain ends at event {base.events}, but it was anchored at event "
                               f"{found.seq} ({found.at})")
    at_anchor = session.scalar(select(AuditEventRow.hash).where(AuditEventRow.seq == found.seq))
    if at_anchor != found.head_hash:
        return replace(report, ok=False, first_bad_seq=found.seq,
                       problem=f"event {found.seq} does not match its anchor ({found.at}): the chain was rewritten")
    return report


def _age(at) -> timedelta:
    when = datetime.fromisoformat(at) if isinstance(at, str) else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc) - when
