"""Assistants: papo's own entity (the OpenAI Assistants API is retired), per tenant; token usage per day."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, ForeignKeyConstraint, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base, Timestamps, new_id


class Assistant(Timestamps, Base):
    __tablename__ = "assistants"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    instructions: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default=text("''"))
    provider: Mapped[str] = mapped_column(Text, nullable=False, default="openai", server_default=text("'openai'"))
    model: Mapped[str] = mapped_column(Text, nullable=False)
    base_url: Mapped[str | None] = mapped_column(Text)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    api_key_env: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    context_token_budget: Mapped[int] = mapped_column(
        Integer, nullable=False, default=8000, server_default=text("8000")
    )
    is_default: Mapped[bool] = mapped_column(nullable=False, default=False, server_default=text("false"))
    accepts_images: Mapped[bool] = mapped_column(nullable=False, default=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint("provider IN ('openai', 'demo')", name="provider"),
        CheckConstraint("context_token_budget BETWEEN 256 AND 2000000", name="budget"),
        # At most one default assistant per tenant: the one a member's first AI chat creates.
        Index("uq_assistants_tenant_id_default", "tenant_id", unique=True, postgresql_where=text("is_default")),
    )


class AssistantTool(Timestamps, Base):
    """A tool an assistant may call (migrations 0033, 0036): a tenant's HTTP endpoint (the secret
    signs each call), a tenant's MCP server (every tool it lists), or one of papo's built-ins."""

    __tablename__ = "assistant_tools"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    assistant_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    parameters: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("""'{"type": "object", "properties": {}}'::jsonb""")
    )
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'http'"))
    url: Mapped[str | None] = mapped_column(Text)
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("10"))
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    authorization_encrypted: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(nullable=False, server_default=text("true"))

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "assistant_id"],
            ["assistants.tenant_id", "assistants.id"],
            ondelete="CASCADE",
            name="fk_assistant_tools_assistant",
        ),
        CheckConstraint("name ~ '^[A-Za-z0-9_-]{1,64}$'", name="name"),
        CheckConstraint("timeout_seconds BETWEEN 1 AND 60", name="timeout"),
        CheckConstraint("kind IN ('http', 'mcp', 'builtin')", name="kind"),
        CheckConstraint(
            """CASE kind
                 WHEN 'http' THEN url IS NOT NULL AND secret_encrypted IS NOT NULL
                   AND authorization_encrypted IS NULL
                 WHEN 'mcp' THEN url IS NOT NULL AND secret_encrypted IS NULL
                 ELSE url IS NULL AND secret_encrypted IS NULL AND authorization_encrypted IS NULL
                   AND name IN ('hand_over_to_person', 'earlier_conversations')
               END""",
            name="shape",
        ),
        Index("uq_assistant_tools_name", "tenant_id", "assistant_id", "name", unique=True),
    )


class DailyUsage(Base):
    """One member's token usage on one day (migration 0007): counts only, no content."""

    __tablename__ = "usage_daily"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    replies: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (Index("ix_usage_daily_tenant_day", "tenant_id", "day"),)
