"""Clerk webhooks (delivered by Svix): keep users, tenants and memberships in step with Clerk."""

from __future__ import annotations

import json
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from svix.webhooks import Webhook, WebhookVerificationError

from papo.auth.tokens import PROVIDER_ROLES
from papo.db.base import new_id
from papo.errors import BadRequest, Forbidden, Unauthorized
from papo.settings import Settings

log = structlog.get_logger(__name__)


def verify_event(settings: Settings, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    if not settings.clerk_webhook_secret:
        raise Forbidden("Clerk webhooks are not configured (PAPO_CLERK_WEBHOOK_SECRET)")
    try:
        Webhook(settings.clerk_webhook_secret).verify(body, headers)
    except WebhookVerificationError as exc:
        raise Unauthorized("webhook signature invalid or too old") from exc
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise BadRequest("webhook payload is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
        raise BadRequest("webhook payload is not a Clerk event")
    return event


def _primary_email(data: dict[str, Any]) -> str | None:
    """The primary address, and only when Clerk has verified it (papo matches on verified ones only)."""
    primary = data.get("primary_email_address_id")
    for address in data.get("email_addresses") or []:
        if not isinstance(address, dict) or address.get("id") != primary:
            continue
        verification = address.get("verification")
        if isinstance(verification, dict) and verification.get("status") == "verified":
            return str(address.get("email_address"))
    return None


def _full_name(data: dict[str, Any]) -> str | None:
    parts = [data.get("first_name"), data.get("last_name")]
    name = " ".join(str(p) for p in parts if p)
    return name or None


def _required(data: dict[str, Any], *path: str) -> str:
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"Clerk event lacks {'.'.join(path)}")
    return value


async def apply_event(session: AsyncSession, event: dict[str, Any]) -> None:
    kind, data = event["type"], event["data"]
    if kind in ("user.created", "user.updated", "user.deleted"):
        await session.execute(
            text("SELECT papo_sync_user(:id, :email, :name, :deleted)"),
            {
                "id": _required(data, "id"),
                "email": _primary_email(data),
                "name": _full_name(data),
                "deleted": kind == "user.deleted",
            },
        )
    elif kind in ("organization.created", "organization.updated", "organization.deleted"):
        await session.execute(
            text("SELECT papo_sync_tenant(:external_id, :name, :new_id, :deleted)"),
            {
                "external_id": _required(data, "id"),
                "name": data.get("name"),
                "new_id": new_id(),
                "deleted": kind == "organization.deleted",
            },
        )
    elif kind in (
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationMembership.deleted",
    ):
        raw_role = str(data.get("role") or "").removeprefix("org:")
        await session.execute(
            text("SELECT papo_sync_membership(:external_id, :user_id, :role, :new_id, :deleted)"),
            {
                "external_id": _required(data, "organization", "id"),
                "user_id": _required(data, "public_user_data", "user_id"),
                "role": PROVIDER_ROLES.get(raw_role, "member"),
                "new_id": new_id(),
                "deleted": kind == "organizationMembership.deleted",
            },
        )
    else:
        log.info("clerk event ignored", type=kind)
