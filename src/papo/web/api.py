"""The web app's pages, one module per area, and the few routes every page shares.

Pages are rendered on the server (Jinja2, autoescaped); one script (static/app.js) adds streaming,
live updates and actions by calling the same /api/v1 endpoints as any client, with the session
cookie and the CSRF header. Forms post with the CSRF token as a hidden field. `pages` holds what
they share, including the guards (who may see a page) as dependencies.

    sign_in        password, sign-up, OpenID Connect, invitations, e-mail verification, sign-out
    chats          the end user's dashboard and conversations
    admin          a tenant admin's settings: brand, members, invitations, API keys, usage
    webhook_pages  a tenant admin's outbound webhooks
    staff          the WhatsApp inbox and numbers"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter, FastAPI, Form, Request, Response

from papo.auth.deps import DbSession
from papo.errors import NotFound
from papo.routes import add_routes
from papo.web import admin, brand, chats, knowledge_pages, pages, sign_in, staff, webhook_pages
from papo.web.i18n import LANG_COOKIE, LANGUAGES
from papo.web.pages import THEME_COOKIE, THEMES, State, VisitorForm, assets, local_path, redirect

router = APIRouter(include_in_schema=False)
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


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
    page: VisitorForm,
    state: State,
    lang: str | None = Form(None),
    theme: str | None = Form(None),
    next: str | None = Form(None),
) -> Response:
    response = redirect(page, state, local_path(next))
    year = 365 * 24 * 3600
    secure = pages.secure_cookies(page.request, state)
    if lang in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=year, samesite="lax", secure=secure)
    if theme in THEMES:
        response.set_cookie(THEME_COOKIE, theme, max_age=year, samesite="lax", secure=secure)
    return response


def install(app: FastAPI) -> None:
    """Add every page and the guards' refusals to the app."""
    pages.install(app)
    add_routes(app, router)
    for area in (sign_in, chats, admin, webhook_pages, knowledge_pages, staff):
        add_routes(app, area.router)
