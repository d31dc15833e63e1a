"""API shapes for WhatsApp sessions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from papo.chat.schemas import AttachmentOut
from papo.whatsapp.status import SessionStatus, seed_status


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[\w .@-]+$")
    transport: str = Field(default="neonize", description="neonize (QR pairing) or cloud (WhatsApp Cloud API).")
    config: dict[str, Any] = Field(default_factory=dict)
    assistant_id: uuid.UUID | None = None


class SessionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[\w .@-]+$")
    config: dict[str, Any] | None = None
    assistant_id: uuid.UUID | None = None


class SessionOut(BaseModel):
    """A session as staff see it; credentials and the QR code are not part of it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    phone_number: str | None
    status: SessionStatus
    status_reason: str | None
    is_active: bool
    last_seen: datetime | None
    transport: str
    assistant_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    has_qr: bool = False

    @property
    def seed_status(self) -> str:
        return seed_status(self.status)


class SessionDetails(SessionOut):
    """Seed's getSessionDetails: the row, what this process holds in memory, and the credentials."""

    config: dict[str, Any]
    memory_status: SessionStatus | None
    has_credentials: bool
    seed_status_word: str


class SessionStats(BaseModel):
    total: int
    active: int
    by_status: dict[str, int]


class CleanupReport(BaseModel):
    examined: int
    deactivated: int
    files_removed: int
    errors: list[str]


class SyncChange(BaseModel):
    id: uuid.UUID
    database: SessionStatus
    memory: SessionStatus


class QrOut(BaseModel):
    status: SessionStatus
    qr_code: str | None


class MessageSentiment(BaseModel):
    score: float = Field(description="-1 (negative) to 1 (positive)")
    label: str = Field(description="positive, neutral or negative")
    language: str = Field(description="detected language of the message")


class ConversationSentiment(BaseModel):
    average: float = Field(description="mean score of the customer's scored messages")
    scored: int
    last: str = Field(description="label of the latest scored message")


class ConversationOut(BaseModel):
    id: uuid.UUID
    title: str | None
    ticket_status: str
    assigned_to: str | None
    bot_enabled: bool
    last_inbound_at: datetime | None
    last_message_at: datetime | None
    whatsapp_session_id: uuid.UUID
    contact_id: uuid.UUID
    wa_id: str
    contact_name: str | None
    created_at: datetime
    sentiment: ConversationSentiment | None = None
    labels: list[str] = []
    team_id: uuid.UUID | None = None
    unread: int | None = Field(default=None, description="The customer's messages since the caller last read it")


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket_status: str | None = Field(default=None, pattern="^(open|pending|closed)$")
    assigned_to: str | None = None
    bot_enabled: bool | None = None
    labels: list[str] | None = Field(default=None, max_length=10)
    team_id: uuid.UUID | None = Field(default=None, description="The team it is assigned to; null unassigns it")


class ReplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=4096)


class InboxMessageOut(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    role: str
    content: str
    status: str
    metadata: dict[str, Any]
    external_id: str | None = None
    delivery_status: str | None
    created_at: datetime
    sentiment: MessageSentiment | None = None
    attachments: list[AttachmentOut] = []


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=4096)


class CannedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shortcut: str = Field(pattern=r"^[a-z0-9_-]{1,32}$", description="Typed as /shortcut in the inbox")
    content: str = Field(min_length=1, max_length=4096)


class CannedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    shortcut: str
    content: str
    created_at: datetime
    updated_at: datetime


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80)


class TeamMembersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[str] = Field(max_length=500)


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    member_ids: list[str]
    created_at: datetime
