"""WhatsApp tables (see migrations 0010, 0013 and 0021)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base, Timestamps, new_id


class WhatsappSession(Timestamps, Base):
    __tablename__ = "whatsapp_sessions"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    phone_number: Mapped[str | None] = mapped_column(Text)
    qr_code: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'STOPPED'"))
    status_reason: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    transport: Mapped[str] = mapped_column(Text, nullable=False)
    assistant_id: Mapped[uuid.UUID | None] = mapped_column()
    # The Cloud API phone_number_id the Graph API accepted this row's token for (migration 0021):
    # only a verified number receives webhooks.
    verified_number: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('STOPPED', 'STARTING', 'SCAN_QR_CODE', 'WORKING', 'FAILED')", name="status"),
        CheckConstraint("length(name) BETWEEN 1 AND 100", name="name"),
        CheckConstraint(
            "verified_number IS NULL OR (transport = 'cloud' AND verified_number = config->>'phone_number_id')",
            name="verified_number",
        ),
        Index(
            "uq_whatsapp_sessions_tenant_name",
            "tenant_id",
            text("lower(name)"),
            unique=True,
            postgresql_where=text("is_active"),
        ),
        Index("ix_whatsapp_sessions_active", "is_active", postgresql_where=text("is_active")),
        # One active verified row per number across every tenant: inbound routing is never ambiguous.
        Index(
            "uq_whatsapp_sessions_verified_number",
            "verified_number",
            unique=True,
            postgresql_where=text("is_active AND verified_number IS NOT NULL"),
        ),
        Index(
            "uq_whatsapp_sessions_tenant_cloud_number",
            "tenant_id",
            text("(config->>'phone_number_id')"),
            unique=True,
            postgresql_where=text("transport = 'cloud' AND is_active AND config ? 'phone_number_id'"),
        ),
    )


class WhatsappWebhookDelivery(Base):
    """A Cloud API webhook delivery, queued before the 200 goes back and processed afterwards (migration 0013)."""

    __tablename__ = "whatsapp_webhook_deliveries"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # A failed attempt waits until retry_at; after the last one the delivery is a dead letter (dead_at).
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["whatsapp_sessions.tenant_id", "whatsapp_sessions.id"],
            name="fk_whatsapp_webhook_deliveries_session",
            ondelete="CASCADE",
        ),
        Index("ix_whatsapp_webhook_deliveries_waiting", "id", postgresql_where=text("dead_at IS NULL")),
        Index("ix_whatsapp_webhook_deliveries_dead", "id", postgresql_where=text("dead_at IS NOT NULL")),
    )


class CannedResponse(Timestamps, Base):
    """A company's saved reply, typed as `/shortcut` in the inbox (migration 0038)."""

    __tablename__ = "canned_responses"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    shortcut: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        CheckConstraint("shortcut ~ '^[a-z0-9_-]{1,32}$'", name="shortcut"),
        CheckConstraint("length(content) BETWEEN 1 AND 4096", name="content"),
        Index("uq_canned_responses_shortcut", "tenant_id", "shortcut", unique=True),
    )


class Team(Timestamps, Base):
    """A company's team of staff; inbox conversations can be assigned to it (migration 0040)."""

    __tablename__ = "teams"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 80", name="name"),
        Index("uq_teams_name", "tenant_id", text("lower(name)"), unique=True),
    )


class TeamMember(Base):
    __tablename__ = "team_members"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "team_id"], ["teams.tenant_id", "teams.id"], ondelete="CASCADE", name="fk_team_members_team"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["memberships.tenant_id", "memberships.user_id"],
            ondelete="CASCADE",
            name="fk_team_members_membership",
        ),
        Index("ix_team_members_user", "tenant_id", "user_id"),
    )
