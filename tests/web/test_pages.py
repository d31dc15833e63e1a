"""The web app over HTTP: CSRF, security headers, page weight, languages, the sanitiser, contrast."""

from __future__ import annotations

import re
import secrets
import time
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from papo.auth.models import Role
from papo.web import brand, markdown
from papo.web.i18n import MESSAGES, pick_language
from tests.support import EXTERNAL_ISSUER, FakeIdentityProvider, TenantHandle


async def sign_in_form(http: httpx.AsyncClient, tenant: TenantHandle) -> str:
    """Sign a member in through the form, as a browser would; returns the page's CSRF token."""
    member = await tenant.member()
    page = await http.get("/login")
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None, page.text
    signed = await http.post(
        "/login", data={"email": member.email, "password": member.password, "csrf_token": token.group(1), "next": "/"}
    )
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == "/"
    cookie_header = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie_header
    assert "SameSite=lax" in cookie_header
    return token.group(1)


async def test_cookie_writes_need_the_csrf_token(browser_like: httpx.AsyncClient, make_tenant: Any) -> None:
    http = browser_like
    token = await sign_in_form(http, await make_tenant())
    assert (await http.get("/api/v1/sessions")).status_code == 200  # reads need none
    forged = await http.post("/api/v1/sessions", json={"title": "x"})
    assert forged.status_code == 403
    assert forged.headers["content-type"] == "application/problem+json"
    assert (await http.get("/api/v1/sessions")).json()["items"] == []  # nothing written
    wrong = await http.post("/api/v1/sessions", json={"title": "x"}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    made = await http.post("/api/v1/sessions", json={"title": "x"}, headers={"X-CSRF-Token": token})
    assert made.status_code == 201
    form = await http.post("/chats", data={"csrf_token": "nope"})
    assert form.status_code == 403


async def test_sign_out_everywhere_ends_every_browser_session(
    app: FastAPI, browser_like: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant = await make_tenant()
    member = await tenant.member()
    laptop = browser_like
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as phone:
        for http in (laptop, phone):
            page = await http.get("/login")
            token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
            assert token is not None
            form = {"email": member.email, "password": member.password, "csrf_token": token.group(1)}
            assert (await http.post("/login", data=form)).status_code == 303
            assert (await http.get("/")).status_code == 200
        page = await phone.get("/")
        token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
        assert token is not None
        out = await phone.post("/logout", data={"csrf_token": token.group(1), "everywhere": "true"})
        assert out.status_code == 303
        for http in (laptop, phone):
            assert (await http.get("/api/v1/sessions")).status_code == 401
            assert (await http.get("/")).headers["location"] == "/login?next=/"


async def test_pages_carry_security_headers_and_stay_light(browser_like: httpx.AsyncClient, make_tenant: Any) -> None:
    http = browser_like
    await sign_in_form(http, await make_tenant())
    page = await http.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["referrer-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline code (the JSON strings block is data)
    weight = 0
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        response = await http.get(asset)
        assert response.status_code == 200
        assert "immutable" in response.headers["cache-control"]  # the hash in the URL busts it
        if asset.endswith((".js", ".css")) or ".js?" in asset or ".css?" in asset:
            weight += len(response.content)
    assert 0 < weight < 100_000, f"chat page JS+CSS is {weight} bytes"


def test_both_languages_have_every_string() -> None:
    assert set(MESSAGES["en"]) == set(MESSAGES["pt-BR"])
    assert pick_language(None, "en-US,en;q=0.9") == "en"
    assert pick_language(None, "fr-FR,pt;q=0.8,en;q=0.5") == "pt-BR"
    assert pick_language("en", "pt-BR") == "en"  # the switch wins
    assert pick_language(None, None) == "pt-BR"


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "![x](javascript:alert(1))",
        "<iframe src=//evil></iframe>",
        '<svg onload="alert(1)">',
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](vbscript:msgbox)",
        "<style>body{display:none}</style>",
    ],
)
def test_markdown_output_cannot_run_script(payload: str) -> None:
    parser = TagCollector()
    parser.feed(markdown.render(payload))
    for tag, attributes in parser.tags:
        assert tag in markdown.ALLOWED_TAGS
        for name, value in attributes:
            assert not name.startswith("on")
            if name in ("href", "src"):
                assert (value or "").startswith(("http://", "https://", "mailto:")), value


def test_markdown_keeps_formatting_and_safe_links() -> None:
    html = markdown.render("**b** `c`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[site](https://example.com)")
    assert "<strong>b</strong>" in html
    assert "<table>" in html
    assert 'href="https://example.com"' in html
    assert 'rel="noopener noreferrer nofollow"' in html


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True))
def test_any_brand_colour_stays_readable(colour: str) -> None:
    assert brand.contrast(colour, brand.text_on(colour)) >= 3.0  # the best of black or white
    assert brand.contrast(brand.readable_on(colour, brand.LIGHT_BACKGROUND), brand.LIGHT_BACKGROUND) >= brand.AA
    assert brand.contrast(brand.readable_on(colour, brand.DARK_BACKGROUND), brand.DARK_BACKGROUND) >= brand.AA


async def test_tenant_settings_api_checks_its_input(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant()
    admin, member = await tenant.member(Role.admin), await tenant.member()
    url = "/api/v1/tenant/settings"
    for body in (
        {"brand": {"primary": "red"}},
        {"brand": {"logo_url": "javascript:alert(1)"}},
        {"brand": {"name": "x" * 81}},
        {"tenant_id": str(tenant.id)},
    ):
        refused = await client.patch(url, json=body, headers=admin.headers)
        assert refused.status_code == 422, body
    assert (await client.patch(url, json={"signup_open": True}, headers=member.headers)).status_code == 403
    ok = await client.patch(url, json={"brand": {"name": "Acme", "primary": "#ABCDEF"}}, headers=admin.headers)
    assert ok.status_code == 204
    css = (await client.get(f"/web/brand.css?tenant={tenant.id}")).text
    assert "--brand:#abcdef" in css
    assert (
        await client.patch(f"/api/v1/members/{admin.user_id}", json={"role": "member"}, headers=admin.headers)
    ).status_code == 403
    assert (
        await client.patch(f"/api/v1/members/{member.user_id}", json={"role": "owner"}, headers=admin.headers)
    ).status_code == 403
    other = await (await make_tenant()).member()
    assert (
        await client.patch(f"/api/v1/members/{other.user_id}", json={"role": "agent"}, headers=admin.headers)
    ).status_code == 404


async def test_clerk_session_cookie_signs_the_browser_in(
    browser_like: httpx.AsyncClient, identity_provider: FakeIdentityProvider
) -> None:
    """With Clerk configured, its `__session` cookie opens the pages and the API (writes still need CSRF)."""
    now = int(time.time())
    claims = {
        "iss": EXTERNAL_ISSUER,
        "sub": "user_" + secrets.token_hex(6),
        "iat": now,
        "nbf": now,
        "exp": now + 120,
        "azp": "https://app.example.com",
        "v": 2,
        "o": {"id": "org_" + secrets.token_hex(6), "rol": "member"},
    }
    http = browser_like
    http.cookies.set("__session", identity_provider.token(claims))
    page = await http.get("/")
    assert page.status_code == 200
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None
    assert (await http.post("/api/v1/sessions", json={"title": "x"})).status_code == 403
    made = await http.post("/api/v1/sessions", json={"title": "via Clerk"}, headers={"X-CSRF-Token": token.group(1)})
    assert made.status_code == 201
    assert made.json()["user_id"] == claims["sub"]
    http.cookies.set("__session", identity_provider.token({**claims, "exp": now - 600}))
    assert (await http.get("/")).headers["location"] == "/login?next=/"
