"""Insights' table (migration 0016): the sentiment scored for each message."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import REAL, CheckConstraint, DateTime, ForeignKeyConstraint, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base


class MessageSentiment(Base):
    """A message's sentiment, visible exactly when the message is (the read policy asks messages)."""

    __tablename__ = "message_sentiments"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column()
    score: Mapped[float] = mapped_column(REAL)
    label: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(Text)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "message_id"],
            ["messages.tenant_id", "messages.id"],
            name="fk_message_sentiments_message",
            ondelete="CASCADE",
        ),
        CheckConstraint("label IN ('positive', 'neutral', 'negative')", name="label"),
        CheckConstraint("score BETWEEN -1 AND 1", name="score"),
        Index("ix_message_sentiments_session", "tenant_id", "session_id"),
    )
