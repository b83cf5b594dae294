"""The console's session: an admin signs in with an API key; the browser keeps a signed
cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS) that names the key by
its sha256 and expires; every write carries a CSRF token bound to the session.

The cookie never holds the key itself. Its signing secret is derived from the
certificate signing key, which every API process loads, so any process accepts it; a key
removed from ``LETHE_ADMIN_KEYS`` ends its sessions at once (the role is looked up on
every request).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from cryptography.hazmat.primitives import serialization

COOKIE = "lethe_console"
MAX_AGE = 8 * 3600


def secret_from(private_key) -> bytes:
    raw = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    return hashlib.sha256(b"lethe-console-session\x00" + raw).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, key_digest: str, *, now: float | None = None) -> str:
    """A session cookie's value for the key with this sha256 (hex)."""
    payload = _b64(json.dumps({"k": key_digest, "e": int((time.time() if now is None else now) + MAX_AGE),
                               "n": secrets.token_hex(8)}, separators=(",", ":")).encode())
    return f"{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


def read(secret: bytes, value: str | None, *, now: float | None = None) -> str | None:
    """The key digest a valid, unexpired cookie names; None otherwise."""
    if not value or value.count(".") != 1:
        return None
    payload, sig = value.split(".")
    try:
        expected = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(sig)):
            return None
        data = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("e", 0) < (time.time() if now is None else now):
        return None
    return data.get("k") if isinstance(data.get("k"), str) else None


def csrf_token(secret: bytes, cookie: str) -> str:
    """The token a form of this session must send back (double submit, bound to the cookie)."""
    return _b64(hmac.new(secret, b"csrf\x00" + cookie.encode(), hashlib.sha256).digest())


def csrf_ok(secret: bytes, cookie: str | None, token: str | None) -> bool:
    return bool(cookie and token) and hmac.compare_digest(csrf_token(secret, cookie).encode(), token.encode())
