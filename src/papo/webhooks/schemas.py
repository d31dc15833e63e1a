"""Wire shapes of outbound webhook subscriptions and their delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from papo.webhooks.service import EVENT_TYPES

TYPES_HELP = "event types to receive: " + ", ".join(EVENT_TYPES)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2000)
    event_types: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES), description=TYPES_HELP)
    description: str | None = Field(default=None, max_length=200)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=8, max_length=2000)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=200)
    is_active: bool | None = None


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signing secret (Standard Webhooks `whsec_…`); shown only now")


class DeliveryOut(BaseModel):
    id: int
    event_id: int | None
    event_type: str
    status: str = Field(description="pending, delivered or failed (gave up after the retry window)")
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    replay_of: int | None
    created_at: datetime
    payload: dict[str, Any]
