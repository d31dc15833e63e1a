"""axe-core (bundled in axe-playwright-python: nothing is downloaded) on every page, on a desktop and
a phone, in both themes and both languages: no serious or critical violation. Each page is also saved
as a screenshot in test-artifacts/ (axe-<page>-<theme>-<language>-<width>.png) for a person to look at."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser

from papo.auth.models import Role
from papo.whatsapp.transports.base import SessionKey
from tests.fake_openai import FakeOpenAI
from tests.fake_whatsapp import FakeTransport
from tests.support import Member, TenantHandle, create_session
from tests.support import send as send_over_api
from tests.web.conftest import ARTIFACTS, default_assistant, sign_in

BLOCKING = ("serious", "critical")
INBOX = "/api/v1/whatsapp/conversations"


async def test_every_page_passes_axe_in_both_themes_on_desktop_and_phone(
    browser: Browser, live_url: str, client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    tenant: TenantHandle = await make_tenant("Acessível")
    admin = await tenant.member(Role.admin)
    await default_assistant(client, tenant, fake_openai[1], "fake-echo")
    chat = await create_session(client, admin, "Conversa **com** markdown")
    await send_over_api(client, admin, chat["id"], "Uma pergunta com `código`")
    invited = await client.post("/api/v1/invitations", headers=admin.headers, json={"email": "nova@example.com"})
    assert invited.status_code == 201, invited.text
    invitation_path = "/" + invited.json()["url"].split("/", 3)[3]
    signed_in_pages = [
        "/",
        f"/chats/{chat['id']}",
        "/settings",
        "/settings/webhooks",
        "/settings/knowledge",
        "/whatsapp",
        "/inbox",
        "/verify-email?token=not-a-real-token",
        "/no-such-page",
    ]
    visitor_pages = ["/login", "/signup", invitation_path]
    found = await audit(browser, live_url, admin, signed_in_pages, visitor_pages=visitor_pages)
    assert not found, "\n".join(found)


async def test_the_inbox_with_a_conversation_open_passes_axe(
    browser: Browser,
    live_url: str,
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
) -> None:
    _, _, agent, key = number
    await fake.customer_writes(key, "bom dia, meu pedido atrasou", wa_id="5541933330000", name="Rita")
    async with asyncio.timeout(10):
        while not (conversations := (await client.get(INBOX, headers=agent.headers)).json()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    found = await audit(browser, live_url, agent, [f"/inbox?conversation_id={conversations[0]['id']}"])
    assert not found, "\n".join(found)


async def audit(
    browser: Browser, live_url: str, who: Member, pages: list[str], visitor_pages: tuple[str, ...] | list[str] = ()
) -> list[str]:
    """The blocking violations on each page at 1280 and 375 px, in English on the light theme and in
    Portuguese on the dark one."""
    axe = Axe()
    found: list[str] = []
    host = live_url.split("//", 1)[1].split(":")[0]
    ARTIFACTS.mkdir(exist_ok=True)
    for theme, language in (("light", "en"), ("dark", "pt-BR")):
        for width, height in ((1280, 800), (375, 740)):
            context = await browser.new_context(locale=language, viewport={"width": width, "height": height})
            await context.add_cookies([{"name": "papo_theme", "value": theme, "domain": host, "path": "/"}])
            try:
                page = await context.new_page()
                for path in [*visitor_pages, None, *pages]:
                    if path is None:
                        await sign_in(page, live_url, who)
                        continue
                    await page.goto(f"{live_url}{path}")
                    where = f"{path} {theme} {language} {width}px"
                    found += await blocking(axe, page, where)
                    await page.screenshot(path=ARTIFACTS / f"axe-{slug(path)}-{theme}-{language}-{width}.png")
            finally:
                await context.close()
    return found


async def blocking(axe: Axe, page: Any, where: str) -> list[str]:
    results = await axe.run(page)
    return [
        f"{where}: {violation['id']} ({violation['impact']}) {violation['help']} — "
        + "; ".join(str(node["target"]) for node in violation["nodes"][:4])
        for violation in results.response["violations"]
        if violation["impact"] in BLOCKING
    ]


def slug(path: str) -> str:
    """A file name for a page's path: /chats/<id> → chats, /inbox?conversation_id=… → inbox-conversation."""
    words = [part for part in path.split("?")[0].split("/") if part and len(part) < 30]
    if "?" in path:
        words.append(path.split("?", 1)[1].split("=")[0].split("_")[0])
    return "-".join(words) or "home"
