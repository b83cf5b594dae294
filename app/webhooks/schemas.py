"""Webhook subscriptions and deliveries, as the API takes and answers them."""
from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.text import Input

EVENTS = ("request.completed", "request.failed", "request.overdue", "model.version_published",
          "model.version_revoked")


class WebhookCreate(Input):
    url: str = Field(min_length=1, max_length=2048, description="http(s); private and loopback addresses only "
                     "with LETHE_WEBHOOK_ALLOW_PRIVATE")
    events: list[Literal[EVENTS]] = Field(min_length=1, max_length=len(EVENTS))
    secret: str | None = Field(None, max_length=100, description="whsec_ and 24 to 64 bytes in base64; "
                               "default: generated")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True) if value.startswith("whsec_") else b""
        except ValueError:
            key = b""
        if not 24 <= len(key) <= 64:
            raise ValueError("a secret is whsec_ followed by 24 to 64 bytes in base64")
        return value


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
