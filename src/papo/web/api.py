"""The web app's pages: sign-in, sign-up, the chat dashboard and the chat view.

Pages are rendered on the server (Jinja2, autoescaped); one script (static/app.js) adds streaming,
live updates and actions by calling the same /api/v1 endpoints as any client, with the session
cookie and the CSRF header. Forms post with the CSRF token as a hidden field."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from papo.assistants import usage
from papo.assistants.service import AssistantService
from papo.auth import oidc, tenant_settings, web_sessions
from papo.auth import service as auth_service
from papo.auth.deps import AuthRuntime, CurrentPrincipal, DbSession, cookie_principal
from papo.auth.models import Role
from papo.auth.service import Principal
from papo.auth.tokens import issue_token
from papo.chat.models import Channel, SessionStatus
from papo.chat.schemas import MessageOut
from papo.chat.service import ChatService
from papo.crypto import KeyBox
from papo.db.engine import after_commit
from papo.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized
from papo.insights.chart import activity_chart
from papo.insights.service import usage_summary
from papo.ops.ratelimit import Decision, RateLimited, client_address
from papo.realtime.service import bounds as realtime_bounds
from papo.runtime import current_runtime
from papo.web import brand, markdown
from papo.web.i18n import LANG_COOKIE, LANGUAGES, Translator, pick_language
from papo.webhooks.service import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from papo.webhooks.service import WebhookSender, WebhookService
from papo.whatsapp.inbox import Inbox
from papo.whatsapp.service import SessionService, WhatsappHub, session_out

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class WebRuntime(AuthRuntime, Protocol):
    """What the pages need from the running process, beyond identity's part."""

    keys: KeyBox
    oidc: oidc.OidcClients
    webhooks: WebhookSender
    whatsapp: WhatsappHub


State = Annotated[WebRuntime, Depends(current_runtime)]
router = APIRouter(include_in_schema=False)
THEME_COOKIE = "papo_theme"
THEMES = ("system", "light", "dark")
SESSION_TTL_SECONDS = 14 * 24 * 3600
REALTIME_TOKEN_SECONDS = 300
MIN_PASSWORD = 10
PAGE_SIZE = 50
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class StaticAssets:
    """Files under static/, served with a content hash in the URL so they can be cached for a year."""

    def __init__(self, directory: Path) -> None:
        self.files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
        self.versions = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in self.files.items()}

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.versions[name]}"


assets = StaticAssets(HERE / "static")
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


@dataclass
class Page:
    """What every template gets."""

    request: Request
    t: Translator
    csrf_cookie: str
    csrf_token: str
    theme: str
    principal: Principal | None = None
    user_email: str | None = None
    tenant_id: uuid.UUID | None = None
    tenant_name: str = "papo"
    brand: dict[str, str] = field(default_factory=dict)
    new_csrf_cookie: bool = False
    # the realtime cursor taken before the page's data was read: the script resumes from it, so
    # nothing that happens between rendering and connecting is missed
    events_since: int | None = None

    @property
    def brand_version(self) -> str:
        """Part of the brand stylesheet's URL, so a changed brand is fetched at once."""
        return hashlib.sha256(json.dumps(self.brand, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def member(self) -> Principal:
        """The signed-in member (only after `signed_in` returned True)."""
        assert self.principal is not None
        return self.principal

    @property
    def user_id(self) -> str:
        return self.member.require_user()

    def context(self, **values: Any) -> dict[str, Any]:
        return {
            "page": self,
            "t": self.t,
            "lang": self.t.language,
            "languages": LANGUAGES,
            "themes": THEMES,
            "asset": assets.url,
            **values,
        }


def _page(request: Request, state: WebRuntime) -> Page:
    csrf_cookie = request.cookies.get(web_sessions.CSRF_COOKIE)
    fresh = not csrf_cookie
    if not csrf_cookie:
        csrf_cookie = web_sessions.CsrfGuard.new_cookie()
    theme = request.cookies.get(THEME_COOKIE, "system")
    return Page(
        request=request,
        t=Translator(pick_language(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))),
        csrf_cookie=csrf_cookie,
        csrf_token=state.csrf.token_for(csrf_cookie),
        theme=theme if theme in THEMES else "system",
        new_csrf_cookie=fresh,
    )


def _secure(request: Request, state: WebRuntime) -> bool:
    public = state.settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def _finish(response: Response, page: Page, state: WebRuntime) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    if page.new_csrf_cookie:
        response.set_cookie(
            web_sessions.CSRF_COOKIE,
            page.csrf_cookie,
            httponly=True,
            samesite="strict",
            secure=_secure(page.request, state),
            max_age=SESSION_TTL_SECONDS,
        )
    return response


def render(page: Page, state: WebRuntime, template: str, status_code: int = 200, **values: Any) -> Response:
    response = templates.TemplateResponse(page.request, template, page.context(**values), status_code=status_code)
    return _finish(response, page, state)


def redirect(page: Page, state: WebRuntime, to: str) -> Response:
    return _finish(RedirectResponse(to, status_code=303), page, state)


def local_path(value: str | None, default: str = "/") -> str:
    """Only same-site paths (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


async def signed_in(page: Page, session: Any, state: WebRuntime) -> bool:
    """Resolve the browser's session (papo's cookie or Clerk's) into the page and the RLS context."""
    try:
        principal = await cookie_principal(page.request, session, state)
    except Unauthorized:
        return False
    if principal is None or principal.user_id is None:
        return False
    user = await auth_service.get_user(session, principal.user_id)
    public = await state.tenants.public(session, principal.tenant_id)
    page.principal, page.user_email, page.tenant_id = principal, user.email, principal.tenant_id
    page.request.state.principal = principal
    _, page.events_since = await realtime_bounds(session)
    if public is not None:
        page.tenant_name, page.brand = public.name, public.brand
    return True


def to_sign_in(page: Page, state: WebRuntime) -> Response:
    target = page.request.url.path + (f"?{page.request.url.query}" if page.request.url.query else "")
    return redirect(page, state, f"/login?next={target}")


def check_form_csrf(page: Page, state: WebRuntime, token: str) -> None:
    state.csrf.check(page.request.cookies.get(web_sessions.CSRF_COOKIE), token)


def chat_service(session: Any, page: Page, state: WebRuntime) -> ChatService:
    return ChatService(session, page.member, state.settings)


def message_view(message: Any) -> dict[str, Any]:
    out = MessageOut.model_validate(message).model_dump(mode="json")
    # nh3 has removed every tag, attribute and scheme that could run script
    out["html"] = Markup(markdown.render(message.content)) if message.role == "assistant" else None  # noqa: S704
    return out


# ---- static files, brand, preferences --------------------------------------------------------


@router.get("/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    body = assets.files.get(name)
    if body is None:
        raise NotFound("no such file")
    etag = f'"{assets.versions[name]}"'
    cache = "public, max-age=31536000, immutable" if request.query_params.get("v") else "public, max-age=300"
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    media_type = MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(body, media_type=media_type, headers={"ETag": etag, "Cache-Control": cache})


@router.get("/web/brand.css")
async def brand_css(session: DbSession, state: State, tenant: uuid.UUID | None = None) -> Response:
    public = await state.tenants.public(session, tenant) if tenant else None
    css = brand.stylesheet(public.brand if public else {})
    return Response(css, media_type="text/css; charset=utf-8", headers={"Cache-Control": "public, max-age=300"})


@router.post("/web/preferences")
async def set_preferences(
    request: Request,
    state: State,
    csrf_token: str = Form(""),
    lang: str | None = Form(None),
    theme: str | None = Form(None),
    next: str | None = Form(None),
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    response = redirect(page, state, local_path(next))
    year = 365 * 24 * 3600
    if lang in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=year, samesite="lax", secure=_secure(request, state))
    if theme in THEMES:
        response.set_cookie(THEME_COOKIE, theme, max_age=year, samesite="lax", secure=_secure(request, state))
    return response


# ---- sign-in, sign-up, sign-out --------------------------------------------------------------


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
    request: Request, state: State, session: DbSession, next: str | None = None, tenant: uuid.UUID | None = None
) -> Response:
    page = _page(request, state)
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
        secure=_secure(page.request, state),
        max_age=SESSION_TTL_SECONDS,
    )
    return response


@router.post("/login")
async def login_submit(
    request: Request,
    state: State,
    session: DbSession,
    email: str = Form(..., max_length=320),
    password: str = Form(..., max_length=1024),
    csrf_token: str = Form(""),
    next: str | None = Form(None),
    tenant: uuid.UUID | None = Form(None),
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    address = client_address(request)
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
async def signup_page(request: Request, state: State, session: DbSession, tenant: uuid.UUID | None = None) -> Response:
    page = _page(request, state)
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
    request: Request,
    state: State,
    session: DbSession,
    email: str = Form(..., max_length=320),
    password: str = Form(..., max_length=1024),
    name: str = Form("", max_length=200),
    csrf_token: str = Form(""),
    tenant: uuid.UUID | None = Form(None),
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    tenant = tenant or default_tenant(state)
    values = {"email": email, "name": name}
    allowance = await state.limiter.check("sign_up_address", client_address(request))
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
    provider: str, request: Request, state: State, tenant: uuid.UUID | None = None, next: str | None = None
) -> Response:
    """Send the browser to Google or the configured OpenID Connect provider."""
    page = _page(request, state)
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
        secure=_secure(request, state),
        path="/auth",
    )
    return response


@router.get("/auth/{provider}/callback", name="oidc_callback")
async def oidc_callback(
    provider: str,
    request: Request,
    state: State,
    session: DbSession,
    code: str | None = None,
    error: str | None = None,
) -> Response:
    page = _page(request, state)
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
async def logout(
    request: Request, state: State, session: DbSession, csrf_token: str = Form(""), everywhere: bool = Form(False)
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    cookie = request.cookies.get(web_sessions.SESSION_COOKIE)
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


# ---- the app ---------------------------------------------------------------------------------


async def chat_list(page: Page, chat: ChatService, status: str, cursor: str | None = None) -> dict[str, Any]:
    listing = SessionStatus.archived if status == "archived" else SessionStatus.active
    rows, next_cursor = await chat.get_chat_sessions(page.user_id, listing, limit=PAGE_SIZE, cursor=cursor)
    previews = await chat.previews([r.id for r in rows])
    now = datetime.now(UTC)
    chats = [
        {
            "id": r.id,
            "title": r.title,
            "preview": previews.get(r.id, ""),
            "when": page.t.ago(r.last_message_at or r.created_at, now),
            "when_iso": (r.last_message_at or r.created_at).isoformat(),
        }
        for r in rows
    ]
    return {"chats": chats, "next_cursor": next_cursor, "status": listing.value}


@router.get("/")
async def dashboard(
    request: Request, state: State, session: DbSession, status: str = "active", cursor: str | None = None
) -> Response:
    page = _page(request, state)
    if not await signed_in(page, session, state):
        return to_sign_in(page, state)
    listing = await chat_list(page, chat_service(session, page, state), status, cursor)
    return render(page, state, "dashboard.html", current=None, **listing)


@router.post("/chats")
async def new_chat(request: Request, state: State, session: DbSession, csrf_token: str = Form("")) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    if not await signed_in(page, session, state):
        return to_sign_in(page, state)
    assistant_id = await AssistantService(session, page.member, state.settings, state.keys).default_id()
    created = await chat_service(session, page, state).create_chat_session(
        page.user_id, channel=Channel.web, assistant_id=assistant_id
    )
    return redirect(page, state, f"/chats/{created.id}")


@router.get("/chats/{session_id}")
async def chat_page(
    session_id: uuid.UUID, request: Request, state: State, session: DbSession, versions: bool = False
) -> Response:
    """The conversation; with `versions=1`, earlier versions (regenerated or edited) are shown too."""
    page = _page(request, state)
    if not await signed_in(page, session, state):
        return to_sign_in(page, state)
    chat = chat_service(session, page, state)
    found = await chat.get_chat_session(session_id, page.user_id)
    if found is None:
        return render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
    history = await chat.get_messages(session_id, page.user_id, latest=True, limit=100, include_superseded=versions)
    messages = [message_view(m) for m in history.items]
    listing = await chat_list(page, chat, "active")
    return render(
        page,
        state,
        "chat.html",
        chat=found,
        messages=messages,
        has_more=history.has_more,
        current=found.id,
        versions=versions,
        **listing,
    )


@router.get("/web/chats/{session_id}/messages/{message_id}")
async def message_fragment(
    session_id: uuid.UUID, message_id: uuid.UUID, principal: CurrentPrincipal, session: DbSession, state: State
) -> JSONResponse:
    """A message with its safe HTML, for the script to swap in once a streamed reply is complete."""
    chat = ChatService(session, principal, state.settings)
    message = await chat.get_message(session_id, message_id, principal.require_user())
    view = message_view(message)
    view["html"] = str(view["html"]) if view["html"] is not None else None
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


# ---- tenant admins' settings ---------------------------------------------------------------------


async def _admin_page(request: Request, state: WebRuntime, session: Any) -> tuple[Page, Response | None]:
    page = _page(request, state)
    if not await signed_in(page, session, state):
        return page, to_sign_in(page, state)
    if not page.member.is_admin:
        return page, render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
    return page, None


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
        **{"notice": None, "error": None, "new_key": None, "invite_link": None, **values},
    )


@router.get("/settings")
async def settings_page(request: Request, state: State, session: DbSession) -> Response:
    page, refused = await _admin_page(request, state, session)
    notice = page.t("settings.saved") if request.query_params.get("saved") else None
    return refused or await _settings(page, state, session, notice=notice)


@router.post("/settings/brand")
async def save_brand(
    request: Request,
    state: State,
    session: DbSession,
    csrf_token: str = Form(""),
    name: str = Form("", max_length=200),
    logo_url: str = Form("", max_length=1000),
    primary: str = Form(""),
    accent: str = Form(""),
    signup_open: bool = Form(False),
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    brand_values = {"name": name, "logo_url": logo_url, "primary": primary, "accent": accent}
    try:
        await tenant_settings.update(session, page.member, state.tenants, brand=brand_values, signup_open=signup_open)
    except DomainError as exc:
        return await _settings(page, state, session, status_code=exc.status, error=exc.detail)
    return redirect(page, state, "/settings?saved=1")


@router.post("/settings/members/{user_id}")
async def save_role(
    user_id: str, request: Request, state: State, session: DbSession, csrf_token: str = Form(""), role: str = Form("")
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    try:
        await tenant_settings.set_role(session, page.member, user_id, Role(role))
    except (DomainError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, DomainError) else "unknown role"
        return await _settings(page, state, session, status_code=getattr(exc, "status", 422), error=detail)
    return redirect(page, state, "/settings?saved=1")


@router.post("/settings/members/{user_id}/remove")
async def remove_member(
    user_id: str, request: Request, state: State, session: DbSession, csrf_token: str = Form("")
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    try:
        await tenant_settings.remove_member(session, page.member, user_id)
    except DomainError as exc:
        return await _settings(page, state, session, status_code=exc.status, error=exc.detail)
    return await _settings(page, state, session, notice=page.t("settings.removed"))


@router.post("/settings/invitations")
async def invite_member(
    request: Request,
    state: State,
    session: DbSession,
    csrf_token: str = Form(""),
    email: str = Form(..., max_length=320),
    role: str = Form("member"),
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    try:
        created = await state.accounts.invite(session, page.member, email, Role(role))
    except (DomainError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, DomainError) else "unknown role"
        return await _settings(page, state, session, status_code=getattr(exc, "status", 422), error=detail)
    if created.url is None:
        return await _settings(page, state, session, notice=page.t("invite.sent", email=created.email))
    return await _settings(page, state, session, invite_link=created.url, invite_email=created.email)


@router.post("/settings/invitations/{invitation_id}/revoke")
async def revoke_invitation(
    invitation_id: uuid.UUID, request: Request, state: State, session: DbSession, csrf_token: str = Form("")
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    await state.accounts.revoke(session, page.member, invitation_id)
    return redirect(page, state, "/settings?saved=1")


@router.get("/invitations/{token}")
async def invitation_page(token: str, request: Request, state: State, session: DbSession) -> Response:
    page = _page(request, state)
    try:
        invitation = await state.accounts.view(session, token)
    except NotFound:
        return render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
    return await _sign_in_page(
        page, state, session, "invitation.html", invitation.tenant_id, invitation=invitation, token=token, error=None
    )


@router.post("/invitations/{token}")
async def accept_invitation(
    token: str,
    request: Request,
    state: State,
    session: DbSession,
    csrf_token: str = Form(""),
    password: str = Form(..., max_length=1024),
    name: str = Form("", max_length=200),
    reset: bool = Form(False),
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    try:
        invitation = await state.accounts.view(session, token)
    except NotFound:
        return render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
    try:
        principal = await state.limiter.sign_in(
            client_address(request),
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
async def verify_email_page(request: Request, state: State, session: DbSession, token: str = "") -> Response:
    """A button, not the confirmation itself: mail scanners open links, and GET changes nothing.
    Only the account's own signed-in browser may confirm (see Accounts.verify_email)."""
    page = _page(request, state)
    if not await signed_in(page, session, state):
        return to_sign_in(page, state)
    return render(page, state, "verify_email.html", token=token[:2000])


@router.post("/verify-email")
async def verify_email(
    request: Request,
    state: State,
    session: DbSession,
    token: str = Form("", max_length=2000),
    csrf_token: str = Form(""),
) -> Response:
    page = _page(request, state)
    check_form_csrf(page, state, csrf_token)
    if not await signed_in(page, session, state):
        return to_sign_in(page, state)
    try:
        await state.accounts.verify_email(session, token, page.user_id)
    except DomainError as exc:
        return render(page, state, "error.html", status_code=exc.status, message=exc.detail)
    return render(page, state, "error.html", message=page.t("verify.done"), title=page.t("verify.done"))


@router.post("/settings/api-keys")
async def create_key(
    request: Request,
    state: State,
    session: DbSession,
    csrf_token: str = Form(""),
    name: str = Form(..., max_length=100),
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    _, plaintext = await auth_service.create_api_key(
        session, page.member.tenant_id, name.strip() or "key", page.user_id
    )
    return await _settings(page, state, session, status_code=201, new_key=plaintext)


@router.post("/settings/api-keys/{key_id}/revoke")
async def revoke_key(
    key_id: uuid.UUID, request: Request, state: State, session: DbSession, csrf_token: str = Form("")
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    await auth_service.revoke_api_key(session, key_id)
    return redirect(page, state, "/settings?saved=1")


# ---- outbound webhooks (tenant admins) --------------------------------------------------------------


async def _webhooks_page(
    page: Page, state: WebRuntime, session: Any, status_code: int = 200, **values: Any
) -> Response:
    service = WebhookService(session, page.member, state.settings, state.keys)
    hooks = [
        {"endpoint": endpoint, "deliveries": await service.deliveries(endpoint.id, 20, None)}
        for endpoint in await service.endpoints()
    ]
    return render(
        page,
        state,
        "webhooks.html",
        status_code=status_code,
        hooks=hooks,
        event_types=WEBHOOK_EVENT_TYPES,
        **{"notice": None, "error": None, "new_secret": None, **values},
    )


@router.get("/settings/webhooks")
async def webhooks_page(request: Request, state: State, session: DbSession) -> Response:
    page, refused = await _admin_page(request, state, session)
    notice = page.t("hooks.queued") if request.query_params.get("queued") else None
    return refused or await _webhooks_page(page, state, session, notice=notice)


@router.post("/settings/webhooks")
async def add_webhook(request: Request, state: State, session: DbSession) -> Response:
    form = await request.form()
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, str(form.get("csrf_token", "")))
    if refused:
        return refused
    service = WebhookService(session, page.member, state.settings, state.keys)
    description = str(form.get("description", "")).strip()[:200] or None
    try:
        _, secret = await service.create(
            str(form.get("url", ""))[:2000], [str(v) for v in form.getlist("event_types")], description
        )
    except DomainError as exc:
        return await _webhooks_page(page, state, session, status_code=exc.status, error=exc.detail)
    return await _webhooks_page(page, state, session, status_code=201, new_secret=secret)


@router.post("/settings/webhooks/{webhook_id}/{action}")
async def webhook_action(
    webhook_id: uuid.UUID, action: str, request: Request, state: State, session: DbSession, csrf_token: str = Form("")
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    service = WebhookService(session, page.member, state.settings, state.keys)
    if action == "test":
        await service.ping(webhook_id)
        after_commit(session, state.webhooks.wake.set)
        return redirect(page, state, "/settings/webhooks?queued=1")
    if action == "delete":
        await service.delete(webhook_id)
        return redirect(page, state, "/settings/webhooks")
    raise NotFound("no such action")


@router.post("/settings/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay_webhook_delivery(
    webhook_id: uuid.UUID,
    delivery_id: int,
    request: Request,
    state: State,
    session: DbSession,
    csrf_token: str = Form(""),
) -> Response:
    page, refused = await _admin_page(request, state, session)
    check_form_csrf(page, state, csrf_token)
    if refused:
        return refused
    if not 1 <= delivery_id < 2**63:
        raise NotFound("no such delivery")
    await WebhookService(session, page.member, state.settings, state.keys).replay(webhook_id, delivery_id)
    after_commit(session, state.webhooks.wake.set)
    return redirect(page, state, "/settings/webhooks?queued=1")


# ---- the WhatsApp inbox and numbers (company staff) --------------------------------------------------

STAFF = ("owner", "admin", "agent")


async def _staff_page(
    request: Request, state: WebRuntime, session: Any, *, admins: bool = False
) -> tuple[Page, Response | None]:
    page = _page(request, state)
    if not await signed_in(page, session, state):
        return page, to_sign_in(page, state)
    allowed = page.member.is_admin if admins else page.member.role in STAFF
    if not allowed:
        return page, render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
    return page, None


@router.get("/inbox")
@router.get("/inbox/{conversation_id}")
async def inbox_page(
    request: Request,
    state: State,
    session: DbSession,
    conversation_id: uuid.UUID | None = None,
    ticket: str = "open",
) -> Response:
    page, refused = await _staff_page(request, state, session)
    if refused:
        return refused
    box = Inbox(session, page.member)
    ticket = ticket if ticket in ("open", "pending", "closed") else "open"
    current = messages = None
    assignee = None
    if conversation_id is not None:
        try:
            current = await box.conversation(conversation_id)
            messages = await box.messages(conversation_id)
        except NotFound:
            return render(page, state, "error.html", status_code=404, message=page.t("error.not_found"))
        if current["assigned_to"]:
            members = {m.user_id: m.email for m in await tenant_settings.staff(session, page.member)}
            assignee = members.get(current["assigned_to"])
    return render(
        page,
        state,
        "inbox.html",
        conversations=await box.conversations(ticket),
        ticket=ticket,
        current=current,
        messages=messages or [],
        assignee=assignee,
    )


@router.get("/whatsapp")
async def whatsapp_page(request: Request, state: State, session: DbSession) -> Response:
    page, refused = await _staff_page(request, state, session, admins=True)
    if refused:
        return refused
    rows = await SessionService(session, page.member, state.whatsapp).find_all_by_company()
    return render(page, state, "whatsapp.html", sessions=[session_out(row) for row in rows])
