"""Chat sessions and messages (seed 000), with tenant, owner and channel; WhatsApp contacts."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
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
    tool = "tool"  # a tool call's result, written by papo alone (see migration 0033)
    note = "note"  # an agent's private note in an inbox conversation (migration 0038)


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
        _pg_enum(SessionStatus, "chat_session_status"),
        nullable=False,
        default=SessionStatus.active,
        server_default=text("'active'"),
    )
    channel: Mapped[Channel] = mapped_column(
        _pg_enum(Channel, "chat_channel"), nullable=False, default=Channel.api, server_default=text("'api'")
    )
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    assistant_id: Mapped[uuid.UUID | None] = mapped_column()
    # Never NULL (created_at is not), but the migrated column carries no NOT NULL: the same here.
    activity_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), Computed("coalesce(last_message_at, created_at)", persisted=True), nullable=True
    )
    # Its minute (migration 0045): what the lists' indexes hold, so a message's update of the row is HOT.
    activity_minute: Mapped[int] = mapped_column(
        BigInteger,
        Computed("papo_activity_minute(COALESCE(last_message_at, created_at))", persisted=True),
        nullable=True,
    )
    # A WhatsApp conversation (migration 0011): the number that received it, the contact, and the ticket.
    whatsapp_session_id: Mapped[uuid.UUID | None] = mapped_column()
    contact_id: Mapped[uuid.UUID | None] = mapped_column()
    ticket_status: Mapped[str | None] = mapped_column(Text)
    assigned_to: Mapped[str | None] = mapped_column(Text)
    bot_enabled: Mapped[bool] = mapped_column(server_default=text("false"))
    last_inbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default=text("'{}'"))
    team_id: Mapped[uuid.UUID | None] = mapped_column()  # the inbox team it is assigned to (migration 0040)

    __table_args__ = (
        CheckConstraint("cardinality(labels) <= 10", name="labels"),
        ForeignKeyConstraint(
            ["tenant_id", "assistant_id"],
            ["assistants.tenant_id", "assistants.id"],
            ondelete="SET NULL (assistant_id)",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "contact_id"], ["contacts.tenant_id", "contacts.id"], name="fk_chat_sessions_contact"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "team_id"],
            ["teams.tenant_id", "teams.id"],
            ondelete="SET NULL (team_id)",
            name="fk_chat_sessions_team",
        ),
        Index("ix_chat_sessions_team", "tenant_id", "team_id", postgresql_where=text("team_id IS NOT NULL")),
        ForeignKeyConstraint(
            ["tenant_id", "whatsapp_session_id"],
            ["whatsapp_sessions.tenant_id", "whatsapp_sessions.id"],
            name="fk_chat_sessions_whatsapp_session",
        ),
        CheckConstraint(
            "(channel = 'whatsapp') = (ticket_status IS NOT NULL)"
            " AND (ticket_status IS NULL OR ticket_status IN ('open', 'pending', 'closed'))",
            name="ticket",
        ),
        Index(
            "ix_chat_sessions_owner_listing",
            "tenant_id",
            "user_id",
            "status",
            text("activity_minute DESC"),
        ),
        Index("ix_chat_sessions_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")),
        Index(
            "uq_chat_sessions_open_conversation",
            "tenant_id",
            "whatsapp_session_id",
            "contact_id",
            unique=True,
            postgresql_where=text("channel = 'whatsapp' AND ticket_status <> 'closed'"),
        ),
        Index(
            "ix_chat_sessions_inbox",
            "tenant_id",
            "ticket_status",
            text("activity_minute DESC"),
            postgresql_where=text("channel = 'whatsapp'"),
        ),
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
        _pg_enum(MessageStatus, "message_status"),
        nullable=False,
        default=MessageStatus.sent,
        server_default=text("'sent'"),
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
        nullable=True,  # as migrated, though never NULL (content is not)
        deferred=True,
    )
    # WhatsApp's message id (unique per tenant) and its delivery status, which only moves forward.
    external_id: Mapped[str | None] = mapped_column(Text)
    delivery_status: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["chat_sessions.tenant_id", "chat_sessions.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "branch_of"], ["messages.tenant_id", "messages.id"], ondelete="SET NULL (branch_of)"
        ),
        CheckConstraint("role IN ('user', 'assistant', 'system', 'tool', 'note')", name="role"),
        CheckConstraint(
            "reply_state IN ('streaming', 'complete', 'stopped', 'failed', 'interrupted')", name="reply_state"
        ),
        CheckConstraint(
            "delivery_status IS NULL OR delivery_status IN ('pending', 'sent', 'delivered', 'read', 'failed')",
            name="delivery",
        ),
        Index("ix_messages_session_keyset", "tenant_id", "session_id", "created_at", "id"),
        Index("ix_messages_owner_recent", "tenant_id", "user_id", text("created_at DESC")),
        Index("ix_messages_search_vector", "search_vector", postgresql_using="gin"),
        Index("ix_messages_streaming", "updated_at", postgresql_where=text("reply_state = 'streaming'")),
        Index("ix_messages_branch_of", "tenant_id", "branch_of", postgresql_where=text("branch_of IS NOT NULL")),
        Index(
            "uq_messages_external_id",
            "tenant_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
        ),
        Index("ix_messages_tenant_created", "tenant_id", "created_at"),
    )


class Contact(Timestamps, Base):
    """A WhatsApp customer of a tenant, by WhatsApp id (migration 0011)."""

    __tablename__ = "contacts"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    wa_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("tenant_id", "wa_id", name="uq_contacts_tenant_wa_id"),)


class Attachment(Base):
    """A file or structured part of a message (migration 0024): visible exactly when its message is."""

    __tablename__ = "attachments"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    session_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    channel: Mapped[Channel] = mapped_column(_pg_enum(Channel, "chat_channel"), nullable=False)
    user_id: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    mime_type: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)
    source: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    blob_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "message_id"],
            ["messages.tenant_id", "messages.id"],
            ondelete="CASCADE",
            name="fk_attachments_message",
        ),
        CheckConstraint(
            "kind IN ('image', 'audio', 'voice', 'video', 'document', 'sticker', 'location', 'contacts')",
            name="kind",
        ),
        CheckConstraint("state IN ('pending', 'stored', 'unavailable', 'rejected')", name="state"),
        CheckConstraint("size IS NULL OR size >= 0", name="size"),
        CheckConstraint("state <> 'stored' OR kind IN ('location', 'contacts') OR blob_key IS NOT NULL", name="stored"),
        Index("ix_attachments_message", "tenant_id", "message_id"),
        Index("ix_attachments_pending", "next_attempt_at", postgresql_where=text("state = 'pending'")),
        Index(
            "ix_attachments_stored_size",
            "tenant_id",
            postgresql_include=["size"],
            postgresql_where=text("blob_key IS NOT NULL"),
        ),
    )


class BlobDeletion(Base):
    """A blob whose attachment row is gone, waiting for the worker that deletes it."""

    __tablename__ = "blob_deletions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    blob_key: Mapped[str] = mapped_column(Text, nullable=False)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ConversationRead(Base):
    """When an agent last read a conversation (migration 0039): the inbox counts what came since."""

    __tablename__ = "conversation_reads"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["chat_sessions.tenant_id", "chat_sessions.id"],
            ondelete="CASCADE",
            name="fk_conversation_reads_session",
        ),
    )
