"""A tenant's own settings: brand, open sign-up, and its members' roles (tenant admins only)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, delete, func, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.models import (
    ADMIN_ROLES,
    STAFF_ROLES,
    ApiKey,
    Invitation,
    Membership,
    MembershipRemoval,
    Role,
    Tenant,
    User,
)
from papo.auth.service import Principal
from papo.auth.tenant_cache import TenantCache
from papo.db.engine import driver
from papo.errors import Forbidden, InvalidInput, NotFound

MAX_BRAND_NAME = 80
HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


def valid_colour(value: str | None) -> bool:
    return bool(value and HEX_COLOUR.match(value))


@dataclass(frozen=True)
class MemberRow:
    user_id: str
    email: str | None
    name: str | None
    role: str


def clean_brand(brand: dict[str, Any]) -> dict[str, str]:
    """Only known keys, colours as #rrggbb, the logo only over https; blank values are dropped."""
    cleaned: dict[str, str] = {}
    name = str(brand.get("name") or "").strip()
    if len(name) > MAX_BRAND_NAME:
        raise InvalidInput(f"the brand name is limited to {MAX_BRAND_NAME} characters", field="brand.name")
    if name:
        cleaned["name"] = name
    for key in ("primary", "accent"):
        value = str(brand.get(key) or "").strip()
        if value and not valid_colour(value):
            raise InvalidInput("colours are #rrggbb", field=f"brand.{key}")
        if value:
            cleaned[key] = value.lower()
    logo = str(brand.get("logo_url") or "").strip()
    if logo and (not logo.startswith("https://") or len(logo) > 500 or any(c in logo for c in "\"'<> ")):
        raise InvalidInput("the logo must be an https:// image URL", field="brand.logo_url")
    if logo:
        cleaned["logo_url"] = logo
    return cleaned


async def update(
    session: AsyncSession,
    principal: Principal,
    tenants: TenantCache,
    *,
    brand: dict[str, Any] | None,
    signup_open: bool | None,
) -> None:
    principal.require_admin()
    tenants.changing(session, principal.tenant_id)
    patch: dict[str, Any] = {}
    if brand is not None:
        patch["brand"] = clean_brand(brand)
    if signup_open is not None:
        patch["signup_open"] = signup_open
    await _merge_settings(session, principal.tenant_id, patch)


async def _merge_settings(session: AsyncSession, tenant_id: uuid.UUID, patch: dict[str, Any]) -> None:
    """Overwrite these top-level keys of the tenant's settings and keep the others."""
    await session.execute(
        sql_update(Tenant).where(Tenant.id == tenant_id).values(settings=Tenant.settings.concat(patch))
    )


async def setting(session: AsyncSession, tenant_id: uuid.UUID, key: str) -> str | None:
    """One top-level value of the tenant's settings, as text (None when unset). Read before every
    reply starts (its AI quota), so straight through the unit's driver."""
    value: str | None = await driver(session).fetchval(
        "SELECT settings->>$2 FROM tenants WHERE id = $1", tenant_id, key
    )
    return value


async def set_setting(session: AsyncSession, principal: Principal, key: str, value: Any) -> None:
    """Set (or, with None, remove) one top-level value of the admin's tenant settings."""
    principal.require_admin()
    if value is None:
        await session.execute(
            sql_update(Tenant).where(Tenant.id == principal.tenant_id).values(settings=Tenant.settings.op("-")(key))
        )
        return
    await _merge_settings(session, principal.tenant_id, {key: value})


async def _members(
    session: AsyncSession, principal: Principal, *, roles: Collection[Role] | None = None
) -> list[MemberRow]:
    """The principal's tenant's members (those in `roles`, when given), ordered by address."""
    query = (
        select(User.id, User.email, User.name, Membership.role.cast(Text))
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == principal.tenant_id)
        .order_by(func.lower(func.coalesce(User.email, User.id)))
    )
    if roles is not None:
        query = query.where(Membership.role.in_(roles))
    return [MemberRow(*row) for row in await session.execute(query)]


async def members(session: AsyncSession, principal: Principal) -> list[MemberRow]:
    principal.require_admin()
    return await _members(session, principal)


async def _other_members_role(session: AsyncSession, principal: Principal, user_id: str, not_yourself: str) -> str:
    """The current role of another member of the admin's tenant (404 for anyone else)."""
    principal.require_admin()
    if user_id == principal.user_id:
        raise Forbidden(not_yourself)
    current: str | None = await session.scalar(
        select(Membership.role.cast(Text)).where(
            Membership.tenant_id == principal.tenant_id, Membership.user_id == user_id
        )
    )
    if current is None:
        raise NotFound("no such member in this tenant")
    return current


async def set_role(session: AsyncSession, principal: Principal, user_id: str, role: Role) -> None:
    current = await _other_members_role(
        session, principal, user_id, "you cannot change your own role; ask another admin"
    )
    if Role.owner.value in (role.value, current) and principal.role != Role.owner.value:
        raise Forbidden("only owners grant or take the owner role")
    await session.execute(
        sql_update(Membership)
        .where(Membership.tenant_id == principal.tenant_id, Membership.user_id == user_id)
        .values(role=role)
    )
    if current in ADMIN_ROLES and role not in ADMIN_ROLES:
        await _withdraw_admin_powers(session, principal, user_id)


async def remove_member(session: AsyncSession, principal: Principal, user_id: str) -> None:
    """Take a person out of the tenant. Their requests, browser sessions and open streams stop at
    once (every one of them checks the membership); their chats stay with the tenant."""
    current = await _other_members_role(session, principal, user_id, "you cannot remove yourself; ask another admin")
    if current == Role.owner.value and principal.role != Role.owner.value:
        raise Forbidden("only owners remove owners")
    await session.execute(
        delete(Membership).where(Membership.tenant_id == principal.tenant_id, Membership.user_id == user_id)
    )
    await _withdraw_admin_powers(session, principal, user_id)
    # remembered, so an outside issuer's next token for this person does not provision them again
    await session.execute(
        insert(MembershipRemoval)
        .values(tenant_id=principal.tenant_id, user_id=user_id)
        .on_conflict_do_update(
            index_elements=[MembershipRemoval.tenant_id, MembershipRemoval.user_id],
            set_={MembershipRemoval.removed_at: func.now()},
        )
    )


async def _withdraw_admin_powers(session: AsyncSession, principal: Principal, user_id: str) -> None:
    """What a former admin could still use: the API keys they created (they saw the secrets) and
    the invitations they sent (each would admit whoever holds it, with the role they chose)."""
    await session.execute(
        sql_update(ApiKey)
        .where(ApiKey.tenant_id == principal.tenant_id, ApiKey.created_by == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    await session.execute(
        sql_update(Invitation)
        .where(
            Invitation.tenant_id == principal.tenant_id,
            Invitation.invited_by == user_id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
    )


async def staff(session: AsyncSession, principal: Principal) -> list[MemberRow]:
    """The company's owners, admins and agents (whom a conversation can be assigned to)."""
    return await _members(session, principal, roles=STAFF_ROLES)
