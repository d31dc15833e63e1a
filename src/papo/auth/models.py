"""Identity tables: tenants, users, memberships, API keys, web sessions, invitations, outside identities."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Enum, ForeignKey, ForeignKeyConstraint, Index, Text, func, text
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
    # Set once someone proved control of the address (migration 0020).
    email_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The outside issuer whose subject `id` is; NULL for papo's own accounts, '*' for one not bound yet.
    issuer: Mapped[str | None] = mapped_column(Text)

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
    role: Mapped[Role] = mapped_column(role_enum, nullable=False, default=Role.member, server_default=text("'member'"))

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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("uq_api_keys_tenant_id_key_hash", "tenant_id", "key_hash", unique=True),
        Index("ix_api_keys_key_hash", "key_hash"),
    )


class WebSession(Base):
    """A browser's sign-in: the cookie's token is stored only as its SHA-256 (migration 0008)."""

    __tablename__ = "web_sessions"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # Removing the membership ends its sessions.
        ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["memberships.tenant_id", "memberships.user_id"],
            name="fk_web_sessions_membership",
            ondelete="CASCADE",
        ),
        Index("uq_web_sessions_token_hash", "token_hash", "tenant_id", unique=True),
        Index("ix_web_sessions_user", "tenant_id", "user_id"),
        Index("ix_web_sessions_expires_at", "expires_at"),
    )


class Invitation(Base):
    """A one-time, expiring token that joins a person to a tenant in a role (migration 0020)."""

    __tablename__ = "invitations"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(Text)
    role: Mapped[Role] = mapped_column(role_enum)
    # The invitee's account shell until an existing account accepts.
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(Text)
    # Whether the token went to the mailbox, so accepting it proves the address.
    proves_email: Mapped[bool] = mapped_column()
    invited_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_by: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("uq_invitations_token_hash", "token_hash", "tenant_id", unique=True),
        Index(
            "uq_invitations_pending",
            "tenant_id",
            "email",
            unique=True,
            postgresql_where=text("accepted_at IS NULL AND revoked_at IS NULL"),
        ),
    )


class MembershipRemoval(Base):
    """An admin removed this member: an outside issuer's next token does not bring them back."""

    __tablename__ = "membership_removals"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UserIdentity(Base):
    """An account's identity at an outside OpenID Connect issuer: (issuer, subject) names it."""

    __tablename__ = "user_identities"

    issuer: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_user_identities_user_id", "user_id"),)
