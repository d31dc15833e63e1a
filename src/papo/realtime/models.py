"""The realtime outbox (migrations 0004, 0025, 0026, 0028): events, retention's mark, consumers' cursors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, PrimaryKeyConstraint, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import conv

from papo.db.base import Base


class Event(Base):
    """One change, written in the transaction that made it (papo_publish_events() draws its seq); its
    id, the position readers use, is given once it committed (papo_stamp_events(), migration 0025)."""

    __tablename__ = "events"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    # Drawn from events_seq_seq by the publishing function, not by a column default.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # From events_id_seq when stamped; NULL until then (no `id > n` selects it).
    id: Mapped[int | None] = mapped_column(BigInteger)
    # user: the stream of user_id; staff: every owner, admin and agent of the tenant.
    audience: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "(audience = 'user' AND user_id IS NOT NULL) OR (audience = 'staff' AND user_id IS NULL)",
            name="audience",
        ),
        # positions only (migration 0026): an unstamped event adds no entry to these two
        Index("ix_events_id", "id", "tenant_id", unique=True, postgresql_where=text("id IS NOT NULL")),
        Index("ix_events_stream", "tenant_id", "user_id", "id", postgresql_where=text("id IS NOT NULL")),
        Index("ix_events_unstamped", "seq", postgresql_where=text("id IS NULL")),
        Index("ix_events_created_at", "created_at", postgresql_using="brin"),
    )


class EventRetention(Base):
    """The single row holding the highest event id retention removed: a resume below it must resync."""

    __tablename__ = "events_retention"

    singleton: Mapped[bool] = mapped_column(server_default=text("true"))
    pruned_through: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    # Declared inline in the migration, so PostgreSQL named these constraints itself.
    __table_args__ = (
        PrimaryKeyConstraint("singleton", name="events_retention_pkey"),
        CheckConstraint("singleton", name=conv("events_retention_singleton_check")),
    )


class OutboxCursor(Base):
    """How far one outbox consumer (sentiment, outbound webhooks) has read the events (migration 0016)."""

    __tablename__ = "outbox_cursors"

    name: Mapped[str] = mapped_column(Text)
    last_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (PrimaryKeyConstraint("name", name="outbox_cursors_pkey"),)
