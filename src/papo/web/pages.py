"""What every page shares: the runtime it needs, the `Page` a template gets, rendering, and the
guards that decide who may see a page, as FastAPI dependencies.

A guard that refuses raises `PageRefused` with the answer to send (the sign-in page, or a 404 that
does not tell a member whether the thing exists); `install` registers its handler. Forms are checked
for their CSRF token before the guard looks at the member, so a forged post never gets further."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Form, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from papo.auth import oidc, web_sessions
from papo.auth import service as auth_service
from papo.auth.deps import AuthRuntime, DbSession, cookie_principal
from papo.auth.service import Principal
from papo.crypto import KeyBox
from papo.errors import Unauthorized, http_problem_handler
from papo.realtime.service import bounds as realtime_bounds
from papo.realtime.service import stamp_events
from papo.runtime import current_runtime
from papo.web.i18n import LANG_COOKIE, LANGUAGES, Translator, pick_language
from papo.webhooks.service import WebhookSender
from papo.whatsapp.hub import WhatsappHub

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class WebRuntime(AuthRuntime, Protocol):
    """What the pages need from the running process, beyond identity's part."""

    keys: KeyBox
    oidc: oidc.OidcClients
    webhooks: WebhookSender
    whatsapp: WhatsappHub


State = Annotated[WebRuntime, Depends(current_runtime)]
THEME_COOKIE = "papo_theme"
THEMES = ("system", "light", "dark")
SESSION_TTL_SECONDS = 14 * 24 * 3600
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


def new_page(request: Request, state: WebRuntime) -> Page:
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


def secure_cookies(request: Request, state: WebRuntime) -> bool:
    public = state.settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def finish(response: Response, page: Page, state: WebRuntime) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    if page.new_csrf_cookie:
        response.set_cookie(
            web_sessions.CSRF_COOKIE,
            page.csrf_cookie,
            httponly=True,
            samesite="strict",
            secure=secure_cookies(page.request, state),
            max_age=SESSION_TTL_SECONDS,
        )
    return response


def render(page: Page, state: WebRuntime, template: str, status_code: int = 200, **values: Any) -> Response:
    response = templates.TemplateResponse(page.request, template, page.context(**values), status_code=status_code)
    return finish(response, page, state)


def redirect(page: Page, state: WebRuntime, to: str) -> Response:
    return finish(RedirectResponse(to, status_code=303), page, state)


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
    await stamp_events(state.db)  # the page's "now" covers the writes this browser saw return
    _, page.events_since = await realtime_bounds(session)
    if public is not None:
        page.tenant_name, page.brand = public.name, public.brand
    return True


def to_sign_in(page: Page, state: WebRuntime) -> Response:
    target = page.request.url.path + (f"?{page.request.url.query}" if page.request.url.query else "")
    return redirect(page, state, f"/login?next={target}")


def check_form_csrf(page: Page, state: WebRuntime, token: str) -> None:
    state.csrf.check(page.request.cookies.get(web_sessions.CSRF_COOKIE), token)


class PageRefused(Exception):
    """A guard's answer instead of the page (see the module's docstring)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page refused")
        self.response = response


async def _answer_refusal(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRefused)
    return exc.response


def install(app: FastAPI) -> None:
    app.add_exception_handler(PageRefused, _answer_refusal)
    app.add_exception_handler(StarletteHTTPException, _missing_page)


API_PREFIXES = ("/api/", "/v1/", "/webhooks/", "/web/", "/metrics", "/healthz", "/readyz", "/docs", "/openapi")


async def _missing_page(request: Request, exc: Exception) -> Response:
    """A browser that opens an address papo does not have gets the 404 page in the app's layout;
    API clients (and anything not asking for HTML) keep the problem+json answer."""
    assert isinstance(exc, StarletteHTTPException)
    wants_page = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(API_PREFIXES)
    if exc.status_code != 404 or not wants_page:
        return await http_problem_handler(request, exc)
    state = await current_runtime(request)
    return not_found(new_page(request, state), state)


@asynccontextmanager
async def afresh(page: Page, state: WebRuntime, session: Any) -> AsyncIterator[Any]:
    """After a refused change: the request's work undone, and a new transaction in the member's
    context to show the page again with the reason (a failed statement leaves the old one unusable)."""
    await session.rollback()
    async with state.db.transaction(page.member.context()) as fresh:
        yield fresh


def not_found(page: Page, state: WebRuntime) -> Response:
    return render(
        page,
        state,
        "error.html",
        status_code=404,
        title=page.t("error.not_found_title"),
        message=page.t("error.not_found"),
    )


async def visitor_page(request: Request, state: State) -> Page:
    return new_page(request, state)


async def visitor_form(request: Request, state: State, csrf_token: str = Form("")) -> Page:
    page = new_page(request, state)
    check_form_csrf(page, state, csrf_token)
    return page


async def _require_member(page: Page, state: WebRuntime, session: Any) -> Page:
    if not await signed_in(page, session, state):
        raise PageRefused(to_sign_in(page, state))
    return page


async def member_page(page: Annotated[Page, Depends(visitor_page)], state: State, session: DbSession) -> Page:
    return await _require_member(page, state, session)


async def member_form(page: Annotated[Page, Depends(visitor_form)], state: State, session: DbSession) -> Page:
    return await _require_member(page, state, session)


STAFF = ("owner", "admin", "agent")


def _require_role(page: Page, state: WebRuntime, *, admin: bool) -> Page:
    allowed = page.member.is_admin if admin else page.member.role in STAFF
    if not allowed:
        raise PageRefused(not_found(page, state))
    return page


async def admin_page(page: Annotated[Page, Depends(member_page)], state: State) -> Page:
    return _require_role(page, state, admin=True)


async def admin_form(page: Annotated[Page, Depends(member_form)], state: State) -> Page:
    return _require_role(page, state, admin=True)


async def staff_page(page: Annotated[Page, Depends(member_page)], state: State) -> Page:
    return _require_role(page, state, admin=False)


# Who may see the page, and whether it is a form post (CSRF-checked first):
Visitor = Annotated[Page, Depends(visitor_page)]
VisitorForm = Annotated[Page, Depends(visitor_form)]
Member = Annotated[Page, Depends(member_page)]
MemberForm = Annotated[Page, Depends(member_form)]
Admin = Annotated[Page, Depends(admin_page)]
AdminForm = Annotated[Page, Depends(admin_form)]
Staff = Annotated[Page, Depends(staff_page)]
