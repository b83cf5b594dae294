"""``/v1/webhooks`` (admin): subscribe a URL to events, list, unsubscribe, and read a
webhook's deliveries with their attempts."""
from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from app.deps import AdminDep, SessionDep
from app.webhooks import service
from app.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, request: Request, session: SessionDep, caller: AdminDep) -> WebhookCreated:
    """Subscribe ``url`` to ``events``. The answer holds the signing secret; later reads
    do not. A URL that is not http(s) or does not resolve is 422 ``invalid_webhook_url``;
    one whose host has a private or loopback address is 422 ``webhook_url_not_allowed``
    unless LETHE_WEBHOOK_ALLOW_PRIVATE is set."""
    allow = request.app.state.settings.webhook_allow_private
    row = service.create(session, actor=caller.key_id, body=body, allow_private=allow)
    return WebhookCreated.model_validate(row)


@router.get("", response_model=list[WebhookOut])
def list_webhooks(session: SessionDep, _: AdminDep) -> list[WebhookOut]:
    return [WebhookOut.model_validate(w) for w in service.live(session)]


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, session: SessionDep, _: AdminDep) -> WebhookOut:
    return WebhookOut.model_validate(service.get(session, webhook_id))


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete_webhook(webhook_id: str, session: SessionDep, caller: AdminDep) -> Response:
    """Unsubscribe; its pending deliveries are cancelled, its history is kept."""
    service.remove(session, actor=caller.key_id, webhook_id=webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    webhook_id: str, session: SessionDep, _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Literal["pending", "delivered", "failed", "cancelled"] | None = None,
) -> list[DeliveryOut]:
    """Newest first, each with every attempt (time, HTTP status or error, milliseconds)."""
    rows = service.deliveries(session, webhook_id, limit=limit, status=status)
    return [DeliveryOut.model_validate({**{c: getattr(r, c) for c in DeliveryOut.model_fields if c != "payload"},
                                        "payload": json.loads(r.payload)}) for r in rows]
