"""API shapes for chat sessions and messages. Never the ORM classes: a client cannot set tenant or owner."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from papo.chat.models import Channel, MessageRole, MessageStatus, SessionStatus


class Strict(BaseModel):
    """Input models refuse unknown fields, so `tenant_id` or `user_id` in a body is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str | None
    title: str | None
    status: SessionStatus
    channel: Channel
    last_message_at: datetime | None
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("metadata_", "metadata"))
    assistant_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime
    preview: str | None = Field(default=None, description="Start of the newest message (in session lists).")


class SupportSessionOut(BaseModel):
    """What a tenant admin sees of a member's chat: no title, no metadata, no messages."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str | None
    status: SessionStatus
    channel: Channel
    last_message_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SupportSessionPage(BaseModel):
    items: list[SupportSessionOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID
    role: MessageRole
    content: str
    status: MessageStatus
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("metadata_", "metadata"))
    reply_state: str | None = Field(
        default=None, description="Assistant replies: streaming, complete, stopped, failed or interrupted."
    )
    superseded_at: datetime | None = Field(default=None, description="Set when a regenerate or edit replaced it.")
    branch_of: uuid.UUID | None = Field(default=None, description="The message this one is a new version of.")
    created_at: datetime
    updated_at: datetime


class MessageEdit(Strict):
    content: str


class SessionCreate(Strict):
    title: str | None = None
    metadata: dict[str, Any] | None = None
    channel: Literal[Channel.web, Channel.api] = Channel.api
    assistant_id: uuid.UUID | Literal["default"] | None = Field(
        default="default",
        description='The assistant that answers user messages: the tenant\'s "default" unless another is chosen; '
        "null for a plain chat.",
    )


class SessionPatch(Strict):
    title: str | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="Merged into the stored metadata (JSON merge patch: null removes a key)."
    )
    status: Literal[SessionStatus.active, SessionStatus.archived] | None = None
    assistant_id: uuid.UUID | Literal["default"] | None = None


class MessageCreate(Strict):
    content: str
    role: MessageRole = MessageRole.user
    metadata: dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _authored(cls, role: MessageRole) -> MessageRole:
        if role == MessageRole.tool:
            raise ValueError("tool messages are written by papo when an assistant calls a tool")
        if role == MessageRole.note:
            raise ValueError("notes are an agent's, in the WhatsApp inbox (POST …/conversations/{id}/notes)")
        return role


class MessagePatch(Strict):
    status: MessageStatus | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="Merged into the stored metadata (JSON merge patch: null removes a key)."
    )


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class MessagePage(BaseModel):
    items: list[MessageOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Cursor after the newest item; pass as `after` to go forward.")
    prev_cursor: str | None = Field(description="Cursor before the oldest item; pass as `before` to go back.")
    has_more: bool = Field(description="Whether more messages exist in the direction this page was read.")


class UserRef(Strict):
    id: str | None = None
    email: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> UserRef:
        if (self.id is None) == (self.email is None):
            raise ValueError("give exactly one of `id` or `email`")
        if self.email is not None and ("@" not in self.email or len(self.email) > 320):
            raise ValueError("`email` is not an e-mail address")
        return self


class ChatCreate(Strict):
    """Back-office request: open a chat on behalf of a member of the API key's tenant."""

    user: UserRef
    title: str | None = None
    metadata: dict[str, Any] | None = None
    create_user: bool = Field(default=False, description="Invite the e-mail as a new member when unknown.")
    assistant_id: uuid.UUID | Literal["default"] | None = "default"


class SearchHit(BaseModel):
    message_id: uuid.UUID
    session_id: uuid.UUID
    session_title: str | None
    role: MessageRole
    created_at: datetime
    snippet: str
    highlights: list[tuple[int, int]] = Field(description="[start, end) character ranges of matches in snippet.")
    rank: float


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: str | None


class LegacySessionCreate(Strict):
    title: str | None = None
    assistant_id: uuid.UUID | Literal["default"] | None = Field(
        default="default", description='Bound to the tenant\'s "default" assistant unless another (or null) is chosen.'
    )


class LegacyMessageCreate(Strict):
    sessionId: uuid.UUID
    message: str


class LegacyDeleted(BaseModel):
    success: bool = True


class AttachmentOut(BaseModel):
    """A file or structured part of a message. `url` serves the file once it is `stored`."""

    id: uuid.UUID
    message_id: uuid.UUID
    kind: Literal["image", "audio", "voice", "video", "document", "sticker", "location", "contacts"]
    state: Literal["pending", "stored", "unavailable", "rejected"] = Field(
        description="pending: being fetched (error says why the last try failed); rejected: not kept (error says why)"
    )
    mime_type: str | None = None
    size: int | None = None
    file_name: str | None = None
    caption: str | None = None
    data: dict[str, Any] | None = Field(default=None, description="A location's coordinates, or shared contact cards.")
    transcript: str | None = None
    error: str | None = None
    url: str | None = None
