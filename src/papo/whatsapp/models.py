"""WhatsApp tables (see migrations 0010 and 0021)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Text, text
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
