"""Identity tables: tenants, users, memberships and tenant API keys."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Enum, ForeignKey, Index, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base, Timestamps, new_id


class Role(enum.StrEnum):
    owner = "owner"
    admin = "admin"
    agent = "agent"
    member = "member"


ADMIN_ROLES = frozenset({Role.owner, Role.admin})
STAFF_ROLES = frozenset({Role.owner, Role.admin, Role.agent})

role_enum = Enum(Role, name="membership_role", values_callable=lambda e: [m.value for m in e])


class Tenant(Timestamps, Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    # The identity provider's organization id (Clerk `org_...`), when the tenant comes from one.
    external_id: Mapped[str | None] = mapped_column(Text, unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")


class User(Timestamps, Base):
    __tablename__ = "users"

    # The identity provider's subject (Clerk `user_...`) or a UUIDv7 for built-in accounts.
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    email: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_users_email", "email"),
        Index(
            "uq_users_login_email",
            "email",
            unique=True,
            postgresql_where="password_hash IS NOT NULL",
        ),
    )


class Membership(Timestamps, Base):
    __tablename__ = "memberships"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[Role] = mapped_column(role_enum, nullable=False, default=Role.member)

    __table_args__ = (Index("ix_memberships_user_id", "user_id"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    # First characters of the key, shown in listings so an admin can tell keys apart.
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    key_hash: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("uq_api_keys_tenant_id_key_hash", "tenant_id", "key_hash", unique=True),
        Index("ix_api_keys_key_hash", "key_hash"),
    )
