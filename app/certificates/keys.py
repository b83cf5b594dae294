"""The certificate signing key (Ed25519, PEM on disk) and the published public keys.

The key id (``kid``) is the key's RFC 7638 JWK thumbprint. Every public key that ever
signed stays in the ``signing_keys`` table, so certificates verify after a rotation.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.tables import SigningKeyRow


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str
    public_jwk: dict


def _thumbprint(jwk: dict) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def load(path: Path, *, create: bool) -> SigningKey:
    """The key at ``path``; with ``create``, a new one is written there (mode 600) if none is."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no signing key at {path} (LETHE_SIGNING_KEY_FILE)")
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # appears whole, or not at all; never replaces a key
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = _thumbprint(jwk)
    return SigningKey(private, kid, {**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"})


def publish(session: Session, key: SigningKey) -> None:
    """Add the key's public half to the published set (once; another process may race)."""
    if session.get(SigningKeyRow, key.kid) is None:
        try:
            with session.begin_nested():
                session.add(SigningKeyRow(kid=key.kid, public_jwk=key.public_jwk))
        except IntegrityError:
            pass


def jwks(session: Session) -> dict:
    """Every public key that ever signed, newest first (RFC 7517 JWK Set)."""
    rows = session.scalars(select(SigningKeyRow).order_by(SigningKeyRow.created_at.desc()))
    return {"keys": [r.public_jwk for r in rows]}
