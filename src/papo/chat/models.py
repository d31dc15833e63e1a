"""Chat sessions and messages (seed 000), with tenant, owner and channel."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Computed,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base, Timestamps, new_id


class SessionStatus(enum.StrEnum):
    active = "active"
    archived = "archived"
    deleted = "deleted"


class Channel(enum.StrEnum):
    web = "web"
    api = "api"
    whatsapp = "whatsapp"


class MessageRole(enum.StrEnum):
    user = "user"
    assistant = "assistant"
    system = "system"


class MessageStatus(enum.StrEnum):
    sent = "sent"
    delivered = "delivered"
    error = "error"


def _pg_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(enum_cls, name=name, values_callable=lambda e: [m.value for m in e])


class ChatSession(Timestamps, Base):
    __tablename__ = "chat_sessions"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(Text)
    status: Mapped[SessionStatus] = mapped_column(
        _pg_enum(SessionStatus, "chat_session_status"), nullable=False, default=SessionStatus.active
    )
    channel: Mapped[Channel] = mapped_column(_pg_enum(Channel, "chat_channel"), nullable=False, default=Channel.api)
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    assistant_id: Mapped[uuid.UUID | None] = mapped_column()
    activity_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), Computed("coalesce(last_message_at, created_at)", persisted=True)
    )

    __table_args__ = (
        Index(
            "ix_chat_sessions_owner_listing",
            "tenant_id",
            "user_id",
            "status",
            text("activity_at DESC"),
            text("id DESC"),
        ),
        Index("ix_chat_sessions_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")),
    )


class Message(Base):
    __tablename__ = "messages"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    session_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    # Copied from the session by a trigger, so row-level security needs no join per row.
    user_id: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[Channel] = mapped_column(_pg_enum(Channel, "chat_channel"), nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[MessageStatus] = mapped_column(
        _pg_enum(MessageStatus, "message_status"), nullable=False, default=MessageStatus.sent
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    reply_state: Mapped[str | None] = mapped_column(Text)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    branch_of: Mapped[uuid.UUID | None] = mapped_column()
    # Both set by the insert trigger: created_at is commit-ordered within a session (see migration 0001).
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    search_vector: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed("to_tsvector('simple'::regconfig, papo_fold(content))", persisted=True),
        deferred=True,
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["chat_sessions.tenant_id", "chat_sessions.id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        Index("ix_messages_session_keyset", "tenant_id", "session_id", "created_at", "id"),
        Index("ix_messages_owner_recent", "tenant_id", "user_id", text("created_at DESC")),
        Index("ix_messages_search_vector", "search_vector", postgresql_using="gin"),
    )
