"""Webhooks: subscriptions, events written as deliveries in the caller's transaction
(an outbox: a delivery outlives an API restart), and the URL guard.

An event's payload names requests, models and versions, never an owner id or a free-text
reason: it leaves the service.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import uuid
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.audit.service import append
from app.errors import ApiError, not_found
from app.tables import WebhookDeliveryRow, WebhookRow, utcnow
from app.webhooks.schemas import WebhookCreate


class UrlRefused(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


def resolve(url: str, *, allow_private: bool) -> tuple[str, int]:
    """The address to connect to for ``url`` and its port: http(s) only, and unless
    ``allow_private``, every address the name resolves to must be public (no loopback,
    private, link-local, multicast or reserved address: no SSRF into the service's own
    network). Raises :class:`UrlRefused`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("invalid_webhook_url", "a webhook URL is http:// or https://")
    if not parts.hostname or parts.username or parts.password:
        raise UrlRefused("invalid_webhook_url", "a webhook URL names a host and no credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError, UnicodeError) as exc:
        raise UrlRefused("invalid_webhook_url", f"cannot resolve the webhook's host: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not allow_private:
        barred = [a for a in addresses if not a.is_global or a.is_multicast]
        if barred:
            raise UrlRefused("webhook_url_not_allowed", f"the webhook's host resolves to a non-public address "
                             f"({barred[0]}); set LETHE_WEBHOOK_ALLOW_PRIVATE to allow it")
    return str(addresses[0]), port


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks signature: ``v1,`` and base64 of HMAC-SHA256 over
    ``{id}.{timestamp}.{body}`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def create(session: Session, *, actor: str, body: WebhookCreate, allow_private: bool) -> WebhookRow:
    try:
        resolve(body.url, allow_private=allow_private)
    except UrlRefused as exc:
        raise ApiError(422, exc.code, exc.detail) from None
    secret = body.secret or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    row = WebhookRow(id="wh_" + uuid.uuid4().hex, url=body.url, events=sorted(set(body.events)), secret=secret,
                     created_by=actor, created_at=utcnow())
    session.add(row)
    append(session, "webhook.created", actor=actor, data={"webhook_id": row.id, "url": _where(body.url),
                                                          "events": row.events})
    return row


def live(session: Session) -> list[WebhookRow]:
    return list(session.scalars(select(WebhookRow).where(WebhookRow.deleted_at.is_(None))
                                .order_by(WebhookRow.created_at)))


def get(session: Session, webhook_id: str) -> WebhookRow:
    row = session.get(WebhookRow, webhook_id)
    if row is None or row.deleted_at is not None:
        raise not_found("webhook_not_found", f"no webhook {webhook_id!r}")
    return row


def remove(session: Session, *, actor: str, webhook_id: str) -> None:
    """Unsubscribe: the row stays (its deliveries are history); pending ones are cancelled."""
    row = get(session, webhook_id)
    row.deleted_at = utcnow()
    session.execute(update(WebhookDeliveryRow).where(
        WebhookDeliveryRow.webhook_id == row.id, WebhookDeliveryRow.status == "pending")
        .values(status="cancelled", finished_at=row.deleted_at, next_attempt_at=None))
    append(session, "webhook.removed", actor=actor, data={"webhook_id": row.id})


def deliveries(session: Session, webhook_id: str, *, limit: int, status: str | None) -> list[WebhookDeliveryRow]:
    get(session, webhook_id)
    stmt = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
    if status:
        stmt = stmt.where(WebhookDeliveryRow.status == status)
    return list(session.scalars(stmt.order_by(WebhookDeliveryRow.created_at.desc()).limit(limit)))


def emit(session: Session, event: str, data: dict) -> int:
    """Write one delivery of ``event`` for every live webhook subscribed to it, in the
    caller's transaction; the sender posts them after commit. How many were written."""
    hooks = [h for h in live(session) if event in h.events]
    now = utcnow()
    for hook in hooks:
        msg_id = "msg_" + uuid.uuid4().hex
        payload = json.dumps({"type": event, "timestamp": now.isoformat(timespec="milliseconds"), "data": data},
                             sort_keys=True, separators=(",", ":"), default=_json)
        session.add(WebhookDeliveryRow(id=msg_id, webhook_id=hook.id, event=event, payload=payload, status="pending",
                                       attempts=0, attempt_log=[], next_attempt_at=now, created_at=now))
    return len(hooks)


def _json(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _where(url: str) -> str:
    """The URL without its path and query (which may carry a token) for the audit trail."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
