"""A tenant admin's settings: brand and sign-up, members and their roles, invitations, API keys,
and the usage of the last 30 days."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Form, Response

from papo.assistants import usage
from papo.assistants.service import AssistantService
from papo.auth import service as auth_service
from papo.auth import tenant_settings
from papo.auth.deps import DbSession
from papo.auth.models import Role
from papo.errors import Conflict, DomainError
from papo.insights.chart import activity_chart
from papo.insights.service import usage_summary
from papo.web.pages import Admin, AdminForm, Page, State, WebRuntime, afresh, redirect, render
from papo.whatsapp.canned import CannedResponses
from papo.whatsapp.teams import Teams

router = APIRouter(include_in_schema=False)
SHORTCUT = re.compile(r"^[a-z0-9_-]{1,32}$")


async def _settings(page: Page, state: WebRuntime, session: Any, status_code: int = 200, **values: Any) -> Response:
    principal = page.member
    public = await state.tenants.public(session, principal.tenant_id)
    members = await tenant_settings.members(session, principal)
    emails = {m.user_id: m.email or m.user_id for m in members}
    until = datetime.now(UTC).date()
    rows = await usage.report(session, principal, until - timedelta(days=30), until, None)
    usage_rows = [
        {
            "day": r.day.isoformat(),
            "email": emails.get(r.user_id, r.user_id),
            "replies": r.replies,
            "tokens": r.prompt_tokens + r.completion_tokens,
        }
        for r in reversed(rows)
    ]
    summary = await usage_summary(session, principal, until - timedelta(days=29), until, state.settings.ai_prices)
    base = str(page.request.base_url).rstrip("/")
    return render(
        page,
        state,
        "settings.html",
        summary=summary,
        chart=activity_chart(summary.days),
        status_code=status_code,
        members=members,
        roles=[role.value for role in Role],
        keys=await auth_service.list_api_keys(session),
        assistants=await AssistantService(session, principal, state.settings, state.keys).list(),
        usage=usage_rows,
        signup_open=public.signup_open if public else False,
        signup_link=f"{base}/signup?tenant={principal.tenant_id}",
        invitations=await state.accounts.pending(session, principal),
        canned=await CannedResponses(session, principal).list(),
        teams=await Teams(session, principal).all(),
        **{"notice": None, "error": None, "new_key": None, "invite_link": None, **values},
    )


@router.get("/settings")
async def settings_page(page: Admin, state: State, session: DbSession) -> Response:
    notice = page.t("settings.saved") if page.request.query_params.get("saved") else None
    return await _settings(page, state, session, notice=notice)


@router.post("/settings/brand")
async def save_brand(
    page: AdminForm,
    state: State,
    session: DbSession,
    name: str = Form("", max_length=200),
    logo_url: str = Form("", max_length=1000),
    primary: str = Form(""),
    accent: str = Form(""),
    signup_open: bool = Form(False),
) -> Response:
    brand_values = {"name": name, "logo_url": logo_url, "primary": primary, "accent": accent}
    try:
        await tenant_settings.update(session, page.member, state.tenants, brand=brand_values, signup_open=signup_open)
    except DomainError as exc:
        return await _settings(page, state, session, status_code=exc.status, error=exc.detail)
    return redirect(page, state, "/settings?saved=1")


@router.post("/settings/members/{user_id}")
async def save_role(user_id: str, page: AdminForm, state: State, session: DbSession, role: str = Form("")) -> Response:
    try:
        await tenant_settings.set_role(session, page.member, user_id, Role(role))
    except (DomainError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, DomainError) else "unknown role"
        return await _settings(page, state, session, status_code=getattr(exc, "status", 422), error=detail)
    return redirect(page, state, "/settings?saved=1")


@router.post("/settings/members/{user_id}/remove")
async def remove_member(user_id: str, page: AdminForm, state: State, session: DbSession) -> Response:
    try:
        await tenant_settings.remove_member(session, page.member, user_id)
    except DomainError as exc:
        return await _settings(page, state, session, status_code=exc.status, error=exc.detail)
    return await _settings(page, state, session, notice=page.t("settings.removed"))


@router.post("/settings/invitations")
async def invite_member(
    page: AdminForm,
    state: State,
    session: DbSession,
    email: str = Form(..., max_length=320),
    role: str = Form("member"),
) -> Response:
    try:
        created = await state.accounts.invite(session, page.member, email, Role(role))
    except (DomainError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, DomainError) else "unknown role"
        return await _settings(page, state, session, status_code=getattr(exc, "status", 422), error=detail)
    if created.url is None:
        return await _settings(page, state, session, notice=page.t("invite.sent", email=created.email))
    return await _settings(page, state, session, invite_link=created.url, invite_email=created.email)


@router.post("/settings/invitations/{invitation_id}/revoke")
async def revoke_invitation(invitation_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    await state.accounts.revoke(session, page.member, invitation_id)
    return redirect(page, state, "/settings?saved=1")


@router.post("/settings/api-keys")
async def create_key(
    page: AdminForm, state: State, session: DbSession, name: str = Form(..., max_length=100)
) -> Response:
    _, plaintext = await auth_service.create_api_key(
        session, page.member.tenant_id, name.strip() or "key", page.user_id
    )
    return await _settings(page, state, session, status_code=201, new_key=plaintext)


@router.post("/settings/api-keys/{key_id}/revoke")
async def revoke_key(key_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    await auth_service.revoke_api_key(session, key_id)
    return redirect(page, state, "/settings?saved=1")


async def _created(page: Page, state: WebRuntime, session: Any, creating: Awaitable[object], section: str) -> Response:
    """Create something from a Settings form: back to its section, or the page with why not (409)."""
    try:
        await creating
    except Conflict as exc:
        async with afresh(page, state, session) as fresh:
            return await _settings(page, state, fresh, status_code=409, error=exc.detail)
    return redirect(page, state, f"/settings?saved=1#{section}")


@router.post("/settings/canned-responses")
async def add_canned_response(
    page: AdminForm,
    state: State,
    session: DbSession,
    shortcut: str = Form("", max_length=64),
    content: str = Form("", max_length=8192),
) -> Response:
    shortcut, content = shortcut.strip().lower().lstrip("/"), content.strip()
    if not SHORTCUT.match(shortcut) or not 1 <= len(content) <= 4096:
        return await _settings(page, state, session, status_code=422, error=page.t("settings.canned_invalid"))
    return await _created(
        page, state, session, CannedResponses(session, page.member).create(shortcut, content), "canned-h"
    )


@router.post("/settings/canned-responses/{canned_id}/delete")
async def delete_canned_response(canned_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    await CannedResponses(session, page.member).delete(canned_id)
    return redirect(page, state, "/settings?saved=1#canned-h")


@router.post("/settings/teams")
async def add_team(page: AdminForm, state: State, session: DbSession, name: str = Form("", max_length=200)) -> Response:
    if not 1 <= len(name.strip()) <= 80:
        return await _settings(page, state, session, status_code=422, error=page.t("settings.team_invalid"))
    return await _created(page, state, session, Teams(session, page.member).create(name), "teams-h")


@router.post("/settings/teams/{team_id}/members")
async def team_members(team_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    form = await page.request.form()
    await Teams(session, page.member).set_members(team_id, [str(value) for value in form.getlist("user_ids")])
    return redirect(page, state, "/settings?saved=1#teams-h")


@router.post("/settings/teams/{team_id}/delete")
async def delete_team(team_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    await Teams(session, page.member).delete(team_id)
    return redirect(page, state, "/settings?saved=1#teams-h")
