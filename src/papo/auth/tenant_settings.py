"""A tenant's own settings: brand, open sign-up, and its members' roles (tenant admins only)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.models import ADMIN_ROLES, Role
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
    await driver(session).execute(
        "UPDATE tenants SET settings = settings || $2::jsonb WHERE id = $1", principal.tenant_id, json.dumps(patch)
    )


async def setting(session: AsyncSession, tenant_id: uuid.UUID, key: str) -> str | None:
    """One top-level value of the tenant's settings, as text (None when unset)."""
    value: str | None = await driver(session).fetchval(
        "SELECT settings->>$2 FROM tenants WHERE id = $1", tenant_id, key
    )
    return value


async def set_setting(session: AsyncSession, principal: Principal, key: str, value: Any) -> None:
    """Set (or, with None, remove) one top-level value of the admin's tenant settings."""
    principal.require_admin()
    if value is None:
        await driver(session).execute(
            "UPDATE tenants SET settings = settings - $2 WHERE id = $1", principal.tenant_id, key
        )
        return
    await driver(session).execute(
        "UPDATE tenants SET settings = settings || $2::jsonb WHERE id = $1",
        principal.tenant_id,
        json.dumps({key: value}),
    )


async def members(session: AsyncSession, principal: Principal) -> list[MemberRow]:
    principal.require_admin()
    rows = await driver(session).fetch(
        "SELECT u.id, u.email, u.name, m.role::text AS role FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.tenant_id = $1 ORDER BY lower(coalesce(u.email, u.id))",
        principal.tenant_id,
    )
    return [MemberRow(r["id"], r["email"], r["name"], r["role"]) for r in rows]


async def _other_members_role(session: AsyncSession, principal: Principal, user_id: str, not_yourself: str) -> str:
    """The current role of another member of the admin's tenant (404 for anyone else)."""
    principal.require_admin()
    if user_id == principal.user_id:
        raise Forbidden(not_yourself)
    current: str | None = await driver(session).fetchval(
        "SELECT role::text FROM memberships WHERE tenant_id = $1 AND user_id = $2", principal.tenant_id, user_id
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
    await driver(session).execute(
        "UPDATE memberships SET role = $3::membership_role WHERE tenant_id = $1 AND user_id = $2",
        principal.tenant_id,
        user_id,
        role.value,
    )
    if current in ADMIN_ROLES and role not in ADMIN_ROLES:
        await _withdraw_admin_powers(session, principal, user_id)


async def remove_member(session: AsyncSession, principal: Principal, user_id: str) -> None:
    """Take a person out of the tenant. Their requests, browser sessions and open streams stop at
    once (every one of them checks the membership); their chats stay with the tenant."""
    current = await _other_members_role(session, principal, user_id, "you cannot remove yourself; ask another admin")
    if current == Role.owner.value and principal.role != Role.owner.value:
        raise Forbidden("only owners remove owners")
    await driver(session).execute(
        "DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2", principal.tenant_id, user_id
    )
    await _withdraw_admin_powers(session, principal, user_id)
    # remembered, so an outside issuer's next token for this person does not provision them again
    await driver(session).execute(
        "INSERT INTO membership_removals (tenant_id, user_id) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id, user_id) DO UPDATE SET removed_at = now()",
        principal.tenant_id,
        user_id,
    )


async def _withdraw_admin_powers(session: AsyncSession, principal: Principal, user_id: str) -> None:
    """What a former admin could still use: the API keys they created (they saw the secrets) and
    the invitations they sent (each would admit whoever holds it, with the role they chose)."""
    connection = driver(session)
    await connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND created_by = $2 AND revoked_at IS NULL",
        principal.tenant_id,
        user_id,
    )
    await connection.execute(
        "UPDATE invitations SET revoked_at = now() "
        "WHERE tenant_id = $1 AND invited_by = $2 AND accepted_at IS NULL AND revoked_at IS NULL",
        principal.tenant_id,
        user_id,
    )


async def staff(session: AsyncSession, principal: Principal) -> list[MemberRow]:
    """The company's owners, admins and agents (whom a conversation can be assigned to)."""
    rows = await driver(session).fetch(
        "SELECT u.id, u.email, u.name, m.role::text AS role FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.tenant_id = $1 AND m.role IN ('owner', 'admin', 'agent') ORDER BY lower(coalesce(u.email, u.id))",
        principal.tenant_id,
    )
    return [MemberRow(r["id"], r["email"], r["name"], r["role"]) for r in rows]
