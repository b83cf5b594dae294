"""Webhook subscriptions and deliveries, as the API takes and answers them."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.text import Input

EVENTS = ("request.completed", "request.failed", "request.overdue", "model.version_published",
          "model.version_revoked")


class WebhookCreate(Input):
    url: str = Field(min_length=1, max_length=2048, description="http(s); private and loopback addresses only "
                     "with LETHE_WEBHOOK_ALLOW_PRIVATE")
    events: list[Literal[EVENTS]] = Field(min_length=1, max_length=len(EVENTS))
    secret: str | None = Field(None, pattern=r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$",
                               description="whsec_ and 24 to 64 bytes in base64; default: generated")


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret; shown only in this answer")


class Attempt(BaseModel):
    at: str
    status_code: int | None
    error: str | None
    ms: float


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="the webhook-id header: the same on every attempt")
    webhook_id: str
    event: str
    status: str = Field(description="pending | delivered | failed (gave up) | cancelled (webhook removed)")
    attempts: int
    attempt_log: list[Attempt]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict
