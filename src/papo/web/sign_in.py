"""Signing in and out: password, sign-up, Google / OpenID Connect, invitations, e-mail
verification, and the short-lived token the browser's realtime socket authenticates with."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse

from papo.auth import oidc, web_sessions
from papo.auth import service as auth_service
from papo.auth.deps import CurrentPrincipal, DbSession
from papo.auth.service import Principal
from papo.auth.tokens import issue_token
from papo.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized
from papo.ops.ratelimit import Decision, RateLimited, client_address
from papo.web.pages import (
    SESSION_TTL_SECONDS,
    Member,
    MemberForm,
    Page,
    State,
    Visitor,
    VisitorForm,
    WebRuntime,
    local_path,
    not_found,
    redirect,
    render,
    secure_cookies,
    signed_in,
)

router = APIRouter(include_in_schema=False)
REALTIME_TOKEN_SECONDS = 300
MIN_PASSWORD = 10


async def _sign_in_page(
    page: Page, state: WebRuntime, session: Any, template: str, tenant: uuid.UUID | None, **values: Any
) -> Response:
    public = await state.tenants.public(session, tenant) if tenant else None
    if public is not None:
        page.tenant_name, page.brand, page.tenant_id = public.name, public.brand, public.id
    providers = list(oidc.configured_providers(state.settings).values())
    return render(page, state, template, public=public, tenant=tenant, providers=providers, **values)


async def _throttled(
    page: Page,
    state: WebRuntime,
    session: Any,
    template: str,
    tenant: uuid.UUID | None,
    refusal: Decision,
    **values: Any,
) -> Response:
    headers = refusal.headers()
    error = page.t("auth.throttled", seconds=headers["Retry-After"])
    response = await _sign_in_page(page, state, session, template, tenant, status_code=429, error=error, **values)
    response.headers.update(headers)
    return response


@router.get("/login")
async def login_page(
    page: Visitor, state: State, session: DbSession, next: str | None = None, tenant: uuid.UUID | None = None
) -> Response:
    if await signed_in(page, session, state):
        return redirect(page, state, local_path(next))
    return await _sign_in_page(page, state, session, "login.html", tenant, next=local_path(next), error=None)


async def _open_session(page: Page, state: WebRuntime, session: Any, principal: Principal, next_path: str) -> Response:
    token, _ = await web_sessions.start(
        session, principal, ttl_seconds=SESSION_TTL_SECONDS, user_agent=page.request.headers.get("user-agent")
    )
    response = redirect(page, state, next_path)
    response.set_cookie(
        web_sessions.SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(page.request, state),
        max_age=SESSION_TTL_SECONDS,
    )
    return response


@router.post("/login")
async def login_submit(
    page: VisitorForm,
    state: State,
    session: DbSession,
    email: str = Form(..., max_length=320),
    password: str = Form(..., max_length=1024),
    next: str | None = Form(None),
    tenant: uuid.UUID | None = Form(None),
) -> Response:
    address = client_address(page.request)
    values = {"next": local_path(next), "email": email}
    try:
        principal = await state.limiter.sign_in(
            address, email, lambda: auth_service.login(session, email.strip(), password, tenant)
        )
    except RateLimited as refused:
        return await _throttled(page, state, session, "login.html", tenant, refused.decision, **values)
    except Unauthorized:
        error = page.t("auth.wrong")
        return await _sign_in_page(page, state, session, "login.html", tenant, status_code=401, error=error, **values)
    except DomainError as exc:
        return await _sign_in_page(
            page, state, session, "login.html", tenant, status_code=exc.status, error=exc.detail, **values
        )
    return await _open_session(page, state, session, principal, local_path(next))


@router.get("/signup")
async def signup_page(page: Visitor, state: State, session: DbSession, tenant: uuid.UUID | None = None) -> Response:
    tenant = tenant or default_tenant(state)
    return await _sign_in_page(page, state, session, "signup.html", tenant, error=None, email="", name="")


def default_tenant(state: WebRuntime) -> uuid.UUID | None:
    """Sign-up without a workspace in the link goes to the configured default workspace."""
    ref = state.settings.auth_default_tenant
    try:
        return uuid.UUID(ref) if ref else None
    except ValueError:
        return None


@router.post("/signup")
async def signup_submit(
    page: VisitorForm,
    state: State,
    session: DbSession,
    email: str = Form(..., max_length=320),
    password: str = Form(..., max_length=1024),
    name: str = Form("", max_length=200),
    tenant: uuid.UUID | None = Form(None),
) -> Response:
    tenant = tenant or default_tenant(state)
    values = {"email": email, "name": name}
    allowance = await state.limiter.check("sign_up_address", client_address(page.request))
    if allowance is not None and not allowance.allowed:
        return await _throttled(page, state, session, "signup.html", tenant, allowance, **values)
    error = None
    if "@" not in email or len(email.strip()) < 3:
        error = page.t("auth.email")
    elif len(password) < MIN_PASSWORD:
        error = page.t("auth.password_rule")
    elif tenant is None:
        error = page.t("auth.signup_closed")
    if error is not None:
        return await _sign_in_page(page, state, session, "signup.html", tenant, status_code=422, error=error, **values)
    assert tenant is not None
    try:
        principal = await web_sessions.sign_up(
            session, tenant, email=email.strip(), name=name.strip() or None, password=password
        )
    except (Conflict, Forbidden) as exc:
        message = page.t("auth.exists") if isinstance(exc, Conflict) else page.t("auth.signup_closed")
        status_code = exc.status
        return await _sign_in_page(
            page, state, session, "signup.html", tenant, status_code=status_code, error=message, **values
        )
    assert principal.user_id is not None
    # The address is unproven until this link is opened: until then the account belongs to this
    # workspace only (no invitation elsewhere, no sign-in by that e-mail through a provider).
    await state.accounts.send_verification(principal.user_id, email.strip().lower())
    return await _open_session(page, state, session, principal, "/")


def _callback_url(request: Request, provider: str) -> str:
    return str(request.url_for("oidc_callback", provider=provider))


@router.get("/auth/{provider}/start")
async def oidc_start(
    provider: str, page: Visitor, state: State, tenant: uuid.UUID | None = None, next: str | None = None
) -> Response:
    """Send the browser to Google or the configured OpenID Connect provider."""
    request = page.request
    chosen = oidc.configured_providers(state.settings).get(provider)
    if chosen is None:
        raise NotFound("no such sign-in provider")
    url, sealed = await state.oidc.start(chosen, _callback_url(request, provider), tenant, local_path(next))
    response = redirect(page, state, url)
    response.set_cookie(
        oidc.PENDING_COOKIE,
        sealed,
        max_age=oidc.PENDING_SECONDS,
        httponly=True,
        samesite="lax",  # it must come back with the provider's top-level redirect
        secure=secure_cookies(request, state),
        path="/auth",
    )
    return response


@router.get("/auth/{provider}/callback", name="oidc_callback")
async def oidc_callback(
    provider: str,
    page: Visitor,
    state: State,
    session: DbSession,
    code: str | None = None,
    error: str | None = None,
) -> Response:
    request = page.request
    chosen = oidc.configured_providers(state.settings).get(provider)
    if chosen is None:
        raise NotFound("no such sign-in provider")
    tenant: uuid.UUID | None = None
    try:
        pending = state.oidc.open_pending(request.cookies.get(oidc.PENDING_COOKIE), request.query_params.get("state"))
        tenant = uuid.UUID(pending.tenant) if pending.tenant else None
        if error or not code:
            raise Unauthorized(f"{chosen.label} did not sign you in ({error or 'no code'})")
        identity = await state.oidc.finish(chosen, pending, code, _callback_url(request, provider))
        principal = await oidc.member_for(session, identity, tenant)
    except DomainError as exc:
        response = await _sign_in_page(
            page, state, session, "login.html", tenant, status_code=exc.status, error=exc.detail, next="/"
        )
        response.delete_cookie(oidc.PENDING_COOKIE, path="/auth")
        return response
    response = await _open_session(page, state, session, principal, pending.next)
    response.delete_cookie(oidc.PENDING_COOKIE, path="/auth")
    return response


@router.post("/logout")
async def logout(page: VisitorForm, state: State, session: DbSession, everywhere: bool = Form(False)) -> Response:
    cookie = page.request.cookies.get(web_sessions.SESSION_COOKIE)
    if cookie and await signed_in(page, session, state):
        if everywhere:
            await web_sessions.end_all(session, page.member)
        else:
            await web_sessions.end(session, cookie)
    response = redirect(page, state, "/login")
    response.delete_cookie(web_sessions.SESSION_COOKIE)
    return response


@router.post("/web/realtime-token")
async def realtime_token(request: Request, principal: CurrentPrincipal, state: State) -> JSONResponse:
    """A short-lived bearer token for the realtime socket's auth frame (the cookie is HttpOnly).

    Only a browser's cookie gets one, never a bearer token, so a token cannot mint its successor.
    papo's own session binds the token to itself (signing out ends it); a token taken from an
    identity provider's cookie (Clerk) lasts no longer than that token does."""
    web_session_id = getattr(request.state, "web_session_id", None)
    ttl = REALTIME_TOKEN_SECONDS
    if web_session_id is None:
        if not getattr(request.state, "provider_cookie", False) or principal.expires_at is None:
            raise Forbidden("this endpoint serves the web app's signed-in browser only")
        ttl = min(ttl, int(principal.expires_at - time.time()))
        if ttl <= 0:
            raise Unauthorized("your session has ended; sign in again")
    token, ttl = issue_token(
        state.settings,
        state.signing_key,
        tenant_id=principal.tenant_id,
        user_id=principal.require_user(),
        role=principal.role,
        ttl_seconds=ttl,
        session_id=web_session_id,
    )
    return JSONResponse({"token": token, "expires_in": ttl}, headers={"Cache-Control": "no-store"})


@router.get("/invitations/{token}")
async def invitation_page(token: str, page: Visitor, state: State, session: DbSession) -> Response:
    try:
        invitation = await state.accounts.view(session, token)
    except NotFound:
        return not_found(page, state)
    return await _sign_in_page(
        page, state, session, "invitation.html", invitation.tenant_id, invitation=invitation, token=token, error=None
    )


@router.post("/invitations/{token}")
async def accept_invitation(
    token: str,
    page: VisitorForm,
    state: State,
    session: DbSession,
    password: str = Form(..., max_length=1024),
    name: str = Form("", max_length=200),
    reset: bool = Form(False),
) -> Response:
    try:
        invitation = await state.accounts.view(session, token)
    except NotFound:
        return not_found(page, state)
    try:
        principal = await state.limiter.sign_in(
            client_address(page.request),
            invitation.email,
            lambda: state.accounts.accept(session, token, invitation, password=password, name=name, reset=reset),
        )
    except DomainError as exc:
        response = await _sign_in_page(
            page,
            state,
            session,
            "invitation.html",
            invitation.tenant_id,
            status_code=exc.status,
            invitation=invitation,
            token=token,
            error=exc.detail,
        )
        response.headers.update(exc.headers or {})
        return response
    return await _open_session(page, state, session, principal, "/")


@router.get("/verify-email")
async def verify_email_page(page: Member, state: State, token: str = "") -> Response:
    """A button, not the confirmation itself: mail scanners open links, and GET changes nothing.
    Only the account's own signed-in browser may confirm (see Accounts.verify_email)."""
    return render(page, state, "verify_email.html", token=token[:2000])


@router.post("/verify-email")
async def verify_email(
    page: MemberForm, state: State, session: DbSession, token: str = Form("", max_length=2000)
) -> Response:
    try:
        await state.accounts.verify_email(session, token, page.user_id)
    except DomainError as exc:
        return render(page, state, "error.html", status_code=exc.status, message=exc.detail)
    return render(page, state, "error.html", message=page.t("verify.done"), title=page.t("verify.done"))
