"""The web app in a real browser (Debian's Chromium through Playwright), against the test app."""

from __future__ import annotations

import asyncio
import re
import struct
import uuid
import zlib
from typing import Any

import httpx
from playwright.async_api import Browser, BrowserContext, Page, WebSocketRoute, expect
from svix.webhooks import Webhook

from papo.auth.models import Role
from papo.web.brand import contrast
from papo.whatsapp.transports.base import SessionKey
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.knowledge.documents import make_pdf
from tests.knowledge.test_grounded_replies import ask as ask_over_api
from tests.knowledge.test_grounded_replies import knowledgeable_assistant
from tests.knowledge.test_knowledge_api import POLICIES
from tests.support import FakeOidcProvider, Member, TenantHandle, WebhookReceiver, create_session
from tests.support import send as send_over_api
from tests.web.conftest import default_assistant, screenshot, set_tenant_settings, sign_in, watch_errors
from tests.whatsapp.test_cloud import cloud_number
from tests.whatsapp.test_media import OGG, PDF, deliver, media_message, new_media

__all__ = ["cloud_number"]  # the fixture

STREAMING = '.msg.assistant[data-state="streaming"]'


async def open_new_chat(page: Page, base: str) -> str:
    await page.goto(f"{base}/")
    await page.click(".chatlist form[action='/chats'] button")
    await page.wait_for_url(re.compile(r".*/chats/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


async def send(page: Page, text: str) -> None:
    await page.fill("#composer-input", text)
    await page.keyboard.press("Enter")


async def stored_reply(client: httpx.AsyncClient, member: Member, session_id: str) -> dict[str, Any]:
    items = (await client.get(f"/api/v1/sessions/{session_id}/messages", headers=member.headers)).json()["items"]
    replies = [m for m in items if m["role"] == "assistant"]
    return replies[-1]


class TestSignIn:
    async def test_sign_up_sign_out_wrong_password_and_sign_in(
        self, context: BrowserContext, live_url: str, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Open")
        await set_tenant_settings(tenant, {"signup_open": True})
        page = await context.new_page()
        errors = watch_errors(page)
        await page.goto(f"{live_url}/signup?tenant={tenant.id}")
        await page.fill("input[name=name]", "Ana")
        await page.fill("input[name=email]", f"ana-{tenant.id.hex[:8]}@example.com")
        await page.fill("input[name=password]", "uma senha boa")
        await page.click("form[action='/signup'] button[type=submit]")
        await page.wait_for_url(f"{live_url}/")
        await expect(page.locator("#chats-empty")).to_be_visible()
        await expect(page.locator("html")).to_have_attribute("lang", "pt-BR")

        await page.click("details.account summary")
        await page.click("details.account form:not(:has(input[name=everywhere])) button")
        # the form's redirect, or the page's own when its realtime stream is closed by the sign-out
        # first (that one keeps where the member was): either way, the sign-in page
        await page.wait_for_url(re.compile(r".*/login(\?next=%2F|\?next=/)?$"))
        await page.goto(f"{live_url}/")
        await page.wait_for_url(re.compile(r".*/login\?next=/$"))  # signed out for real

        await page.fill("input[name=email]", f"ana-{tenant.id.hex[:8]}@example.com")
        await page.fill("input[name=password]", "not the password")
        await page.click("form[action='/login'] button[type=submit]")
        await expect(page.locator(".alert")).to_contain_text("E-mail ou senha incorretos")
        await expect(page.locator("input[name=email]")).to_have_value(f"ana-{tenant.id.hex[:8]}@example.com")
        await page.fill("input[name=password]", "uma senha boa")
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(f"{live_url}/")
        assert errors == []

    async def test_closed_sign_up_and_throttled_guessing(
        self, context: BrowserContext, live_url: str, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Closed")
        member = await tenant.member()
        page = await context.new_page()
        await page.goto(f"{live_url}/signup?tenant={tenant.id}")
        await expect(page.locator(".alert")).to_contain_text("não aceita novas contas")
        await page.fill("input[name=email]", "intruder@example.com")
        await page.fill("input[name=password]", "tentando entrar")
        await page.click("form[action='/signup'] button[type=submit]")
        await expect(page.locator(".alert").first).to_contain_text("não aceita novas contas")

        await page.goto(f"{live_url}/login")
        for _ in range(5):
            await page.fill("input[name=email]", member.email)
            await page.fill("input[name=password]", "wrong guess")
            await page.click("form[action='/login'] button[type=submit]")
            await expect(page.locator(".alert")).to_contain_text("incorretos")
        await page.fill("input[name=email]", member.email)
        await page.fill("input[name=password]", member.password)  # even the right one waits now
        await page.click("form[action='/login'] button[type=submit]")
        await expect(page.locator(".alert")).to_contain_text("Muitas tentativas")
        assert page.url.startswith(f"{live_url}/login")


class TestChat:
    async def test_streamed_reply_survives_a_reload_then_stop_and_regenerate(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Stream")
        await default_assistant(client, tenant, fake_openai[1], "fake-slow")
        member = await tenant.member()
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        session_id = await open_new_chat(page, live_url)
        await send(page, "conte uma história")
        await expect(page.locator(".msg.user .body")).to_have_text("conte uma história")
        await expect(page.locator(f"{STREAMING} .body")).to_contain_text("w1", timeout=10_000)
        await expect(page.locator("#stop")).to_be_visible()
        await expect(page.locator("#send")).to_be_hidden()  # Stop takes its place while a reply is written
        await screenshot(page, "chat-streaming-light")

        await page.reload()  # mid-stream: the saved text, then the live rest
        await expect(page.locator(f"{STREAMING} .body")).to_contain_text("Echo:")
        done = page.locator('.msg.assistant[data-state="complete"] .body')
        await expect(done).to_contain_text("w29", timeout=15_000)
        await expect(page.locator("#send")).to_be_visible()
        reply = await stored_reply(client, member, session_id)
        assert reply["reply_state"] == "complete"
        assert (await done.inner_text()).strip() == reply["content"]
        await expect(page.locator("#chat-title")).to_contain_text("conte uma história", timeout=15_000)  # auto-title

        await send(page, "outra")
        await expect(page.locator(f"{STREAMING} .body")).to_contain_text("w2", timeout=10_000)
        await page.keyboard.press("Escape")
        await expect(page.locator('.msg.assistant[data-state="stopped"]')).to_have_count(1)
        await expect(page.locator('.msg.assistant[data-state="stopped"] .status')).to_have_text("Interrompida por você")
        kept = (await stored_reply(client, member, session_id))["content"]
        assert kept.startswith("Echo: outra")
        assert "w29" not in kept

        await page.click('.msg.assistant[data-state="stopped"] button[data-action="regenerate"]')
        await expect(page.locator(f"{STREAMING}")).to_have_count(1)
        await expect(page.locator('.msg.assistant[data-state="complete"]')).to_have_count(2, timeout=15_000)
        await page.goto(f"{live_url}/chats/{session_id}?versions=1")  # the older branch is kept and reachable
        await expect(page.locator(".msg.superseded")).to_have_count(1)
        await expect(page.locator(".msg.superseded .body")).to_contain_text("Echo: outra")
        assert errors == []

    async def test_a_reply_from_the_documents_shows_its_sources(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Fontes")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        body = {
            "name": "Loja",
            "model": "fake-echo",
            "base_url": fake_openai[1],
            "api_key": API_KEY,
            "is_default": True,
        }
        await knowledgeable_assistant(client, admin, body)
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        await open_new_chat(page, live_url)
        await send(page, "qual o prazo para devolver um produto?")
        sources = page.locator('.msg.assistant[data-state="complete"] .sources')
        await expect(sources.locator("summary")).to_have_text("Fontes (1)", timeout=15_000)  # shown live
        await sources.locator("summary").click()
        await expect(sources.locator(".source-title").first).to_have_text("politicas.pdf · p. 1")
        await expect(sources.locator("blockquote").first).to_contain_text("30 dias corridos")
        await screenshot(page, "chat-sources")
        await page.reload()  # and from the server's page
        await expect(page.locator(".msg.assistant .sources summary")).to_have_text("Fontes (1)")
        await send(page, "vocês vendem bicicletas?")
        unknown = page.locator('.msg.assistant[data-state="complete"] .body').last
        await expect(unknown).to_contain_text("Não encontrei essa informação", timeout=15_000)
        assert errors == []

    async def test_a_streaming_reply_is_rendered_as_markdown_from_its_first_words(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Markdown ao vivo")
        member = await tenant.member()
        await default_assistant(client, tenant, fake_openai[1], "fake-slow")
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        await open_new_chat(page, live_url)
        await send(page, "**negrito** e `codigo`\n\n```python\nprint(1)\n```")
        streaming = page.locator('.msg.assistant[data-state="streaming"]')
        await expect(streaming.locator(".body.md strong")).to_have_text("negrito", timeout=10_000)
        await expect(streaming.locator(".md pre .code-lang")).to_have_text("python")
        await expect(streaming.locator(".md pre .copy-code")).to_be_visible()
        assert "**" not in await streaming.locator(".body").inner_text()  # never raw markdown
        await page.reload()  # mid-reply: the saved text, then the stream, both rendered
        await expect(streaming.locator(".body.md strong")).to_have_text("negrito")
        await expect(page.locator('.msg.assistant[data-state="complete"]')).to_have_count(1, timeout=15_000)
        meta = page.locator(".msg.assistant .meta [data-status-label]")
        await expect(meta).to_have_text("")  # a reply is not "delivered"
        # a reply longer than the screen: after its final render the action row is still in view
        await send(page, "\n".join(f"linha {n}" for n in range(60)))
        await expect(page.locator('.msg.assistant[data-state="complete"]')).to_have_count(2, timeout=20_000)
        await expect(page.locator(".msg.assistant .meta button[data-action=regenerate]")).to_be_in_viewport(ratio=1)
        await expect(page.locator(".chat-item time").first).to_contain_text("há")  # as the server writes it
        assert errors == []

    async def test_the_home_page_starts_a_chat_from_its_message_box(
        self,
        browser: Any,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Casa")
        member = await tenant.member()
        await default_assistant(client, tenant, fake_openai[1], "fake-echo")
        for width, height, name in ((1280, 800, "home-desktop"), (375, 740, "home-phone")):
            context = await browser.new_context(locale="pt-BR", viewport={"width": width, "height": height})
            try:
                page = await context.new_page()
                errors = watch_errors(page)
                await sign_in(page, live_url, member)
                await expect(page.locator("#home-input")).to_be_visible()  # no click on "New chat" first
                await screenshot(page, name)
                await page.fill("#home-input", f"olá de {width} px")
                if width > 400:
                    await page.press("#home-input", "Enter")
                else:
                    await page.click("#home-composer button[type=submit]")
                await page.wait_for_url(re.compile(r".*/chats/[0-9a-f-]{36}$"))
                await expect(page.locator(".msg.user .body")).to_have_text(f"olá de {width} px")
                reply = page.locator('.msg.assistant[data-state="complete"] .body')
                await expect(reply).to_contain_text(f"Echo: olá de {width} px", timeout=15_000)
                assert errors == []
            finally:
                await context.close()

    async def test_a_phone_gets_a_compact_header_one_menu_and_the_chat_list_in_a_drawer(
        self, browser: Any, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Telefone")
        member = await tenant.member()
        first = await create_session(client, member, "Primeira conversa")
        await send_over_api(client, member, first["id"], "oi")
        second = await create_session(client, member, "Segunda conversa")
        phone = await browser.new_context(
            locale="pt-BR", viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
        )
        try:
            page = await phone.new_page()
            errors = watch_errors(page)
            await sign_in(page, live_url, member)
            await page.goto(f"{live_url}/chats/{second['id']}")
            head = await page.locator(".chat-head").bounding_box()
            assert head is not None and head["y"] + head["height"] <= 110, head  # not a quarter of the screen
            await expect(page.locator(".chat-menu summary")).to_be_visible()
            await expect(page.locator(".hint")).to_be_hidden()
            await expect(page.locator("#chatlist")).not_to_be_in_viewport()
            await page.click(".chat-head [data-drawer]")
            await expect(page.locator("#chatlist")).to_be_in_viewport(ratio=1)
            await screenshot(page, "phone-drawer")
            await page.click(f'#chatlist .chat-item[data-id="{first["id"]}"] a')
            await page.wait_for_url(f"{live_url}/chats/{first['id']}")
            await expect(page.locator("#chatlist")).not_to_be_in_viewport()
            await page.click(".chat-menu summary")
            await expect(page.locator(".chat-menu [data-chat-action=rename]")).to_be_visible()
            await screenshot(page, "phone-chat-menu")
            await phone.clear_cookies()
            await sign_in(page, live_url, await tenant.member(Role.admin))  # who sees every page
            pages = ("/", f"/chats/{first['id']}", "/settings", "/settings/webhooks", "/settings/knowledge")
            for path in (*pages, "/whatsapp", "/inbox", "/no-such-page"):
                await page.goto(f"{live_url}{path}")
                width = await page.evaluate("document.scrollingElement.scrollWidth")
                assert width <= 375, f"{path} scrolls sideways on a phone ({width}px)"
            await expect(page.locator("main h1")).to_have_text("Página não encontrada")
            await screenshot(page, "phone-404")
            assert errors == []
        finally:
            await phone.close()

    async def test_a_replys_tool_calls_are_shown_above_it(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Ferramentas web")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        assistant_id = await default_assistant(client, tenant, fake_openai[1], "fake-tools")
        tool = {"kind": "builtin", "name": "earlier_conversations"}
        added = await client.post(f"/api/v1/assistants/{assistant_id}/tools", json=tool, headers=admin.headers)
        assert added.status_code == 201, added.text
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        await open_new_chat(page, live_url)
        await send(page, "tool:earlier_conversations geladeira")
        reply = page.locator('.msg.assistant[data-state="complete"]')
        await expect(reply.locator(".body")).to_contain_text("Tool said:", timeout=15_000)

        async def check_order() -> None:
            roles = await page.locator("#messages > .msg").evaluate_all("nodes => nodes.map(n => n.dataset.role)")
            assert roles == ["user", "tool", "assistant"], roles  # the call sits above the reply it fed
            call = page.locator(".msg.tool")
            await expect(call.locator("summary")).to_contain_text("Ferramenta: earlier_conversations · concluída")
            await call.locator("summary").click()
            await expect(call.locator("pre").first).to_have_text('{"query": "geladeira"}')
            await expect(call.locator("pre").last).to_contain_text('"conversations": []')

        await check_order()  # live
        await screenshot(page, "chat-tool-call")
        preview = page.locator(".chat-item.current .preview")
        await expect(preview).not_to_contain_text("{")  # never the tool's raw answer (JSON)
        await page.reload()
        await check_order()  # and from the server's page
        await expect(preview).to_contain_text("Tool said:")
        assert errors == []

    async def test_a_document_attached_in_the_chat_is_answered_from(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Anexos web")
        member = await tenant.member()
        await default_assistant(client, tenant, fake_openai[1], "fake-echo")
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        await open_new_chat(page, live_url)
        await page.set_input_files(
            "#chat-file",
            files=[{"name": "programa.exe", "mimeType": "application/octet-stream", "buffer": b"MZ" + bytes(600)}],
        )
        await page.click("#send")
        await expect(page.locator("#chat-error")).to_contain_text("O chat aceita fotos")  # refused, said why
        await page.click("#chat-pending [data-unpick]")
        pdf = make_pdf(POLICIES)
        await page.set_input_files(
            "#chat-file", files=[{"name": "contrato.pdf", "mimeType": "application/pdf", "buffer": pdf}]
        )
        await expect(page.locator("#chat-pending .name")).to_have_text("contrato.pdf")
        await page.fill("#composer-input", "qual o prazo para devolver um produto?")
        await page.click("#send")
        sent = page.locator(".msg.user").last
        await expect(sent.locator(".attachment.document .file strong")).to_have_text("contrato.pdf")
        await expect(page.locator("#chat-error")).to_be_hidden()
        sources = page.locator('.msg.assistant[data-state="complete"] .sources')
        await expect(sources.locator("summary")).to_have_text("Fontes (1)", timeout=15_000)
        await sources.locator("summary").click()
        await expect(sources.locator(".source-title").first).to_have_text("contrato.pdf · p. 1")
        await screenshot(page, "chat-attached-document")
        await page.reload()
        await expect(page.locator(".msg.user .attachment.document .file strong")).to_have_text("contrato.pdf")
        assert errors == []


class TestDashboard:
    async def test_a_chat_opened_by_the_back_office_appears_live(
        self, browser: Any, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Live")
        member = await tenant.member()
        key = await tenant.api_key()
        watcher = await browser.new_context(locale="en-US")
        try:
            page = await watcher.new_page()
            await sign_in(page, live_url, member)
            await expect(page.locator("#chats-empty")).to_have_text("No chats yet. Start one!")
            await page.wait_for_selector("#rt-status[hidden]", state="attached")
            await page.wait_for_timeout(300)  # the socket has replayed and is live
            created = await client.post(
                "/api/v1/chats",
                json={"user": {"email": member.email}, "title": "Pedido 4471"},
                headers=key.headers,
            )
            assert created.status_code == 201, created.text
            item = page.locator(f'.chat-item[data-id="{created.json()["id"]}"]')
            await expect(item.locator(".title")).to_have_text("Pedido 4471")
            await expect(page.locator("#chats-empty")).to_be_hidden()
            renamed = await client.patch(
                f"/api/v1/sessions/{created.json()['id']}", json={"title": "Pedido 4471 (pago)"}, headers=member.headers
            )
            assert renamed.status_code == 200
            await expect(item.locator(".title")).to_have_text("Pedido 4471 (pago)")
        finally:
            await watcher.close()

    async def test_rename_archive_delete_with_undo_export_and_search(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Actions")
        member = await tenant.member()
        chat = await client.post(
            "/api/v1/sessions",
            json={"title": "Orçamento", "channel": "web", "assistant_id": None},
            headers=member.headers,
        )
        sid = chat.json()["id"]
        for text in ("precisamos revisar o orçamento de marketing", "e a planilha do trimestre"):
            await client.post(f"/api/v1/sessions/{sid}/messages", json={"content": text}, headers=member.headers)
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)

        await page.fill("#search-q", "orcamento marketing")  # accents folded
        hit = page.locator("#search-results a").first
        await expect(hit.locator("mark").first).to_be_visible()
        await expect(page.locator("#search-results h2")).to_have_text("Resultados da busca")  # not mixed in the list
        await hit.click()
        await page.wait_for_url(re.compile(rf".*/chats/{sid}#m-.*"))

        await page.click(".chat-menu summary")
        await page.click("[data-chat-action=rename]")
        await page.fill(".rename input", "Orçamento 2027")
        await page.keyboard.press("Enter")
        await expect(page.locator("#chat-title")).to_have_text("Orçamento 2027")
        await expect(page.locator(f'.chat-item[data-id="{sid}"] .title')).to_have_text("Orçamento 2027")  # live

        await page.click(".chat-menu summary")
        async with page.expect_download() as download_info:
            await page.click(".chat-menu a[data-export=csv]")
        download = await download_info.value
        assert download.suggested_filename.endswith(".csv")

        await page.click(".chat-menu summary")
        await expect(page.locator("[data-chat-action=delete]")).to_have_css(
            "color", re.compile(r"rgb\(180, 35, 24\)|rgb\(249, 112, 102\)")
        )
        await page.click("[data-chat-action=delete]")
        await page.wait_for_url(f"{live_url}/")
        await expect(page.locator("#toast")).to_be_visible()
        await expect(page.locator(f'.chat-item[data-id="{sid}"]')).to_have_count(0)
        await page.click("#undo-delete")
        await page.wait_for_url(f"{live_url}/chats/{sid}")
        await expect(page.locator(".msg.user")).to_have_count(2)

        await page.click(".chat-menu summary")
        await page.click("[data-chat-action=archive]")
        await page.wait_for_url(f"{live_url}/")
        await expect(page.locator(f'.chat-item[data-id="{sid}"]')).to_have_count(0)
        await page.click(".filters a[href='/?status=archived']")
        await expect(page.locator(f'.chat-item[data-id="{sid}"]')).to_have_count(1)
        assert errors == []


class TestAdmin:
    async def test_settings_brand_sign_up_roles_and_api_keys(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Admin")
        admin = await tenant.member(Role.admin)
        member = await tenant.member()
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin)
        await page.click("details.account summary")
        await page.click("a[href='/settings']")
        await page.wait_for_url(f"{live_url}/settings")
        await page.fill("input[name=name]", "Loja Azul")
        await page.fill("input[name=primary]", "#1d4ed8")
        await page.check("input[name=signup_open]")
        await page.click("form[action='/settings/brand'] button[type=submit]")
        await expect(page.locator(".notice")).to_have_text("Salvo.")
        await expect(page.locator(".brand")).to_contain_text("Loja Azul")
        background = await page.evaluate("getComputedStyle(document.querySelector('button.primary')).backgroundColor")
        assert background == "rgb(29, 78, 216)"
        assert (await client.get(f"/login?tenant={tenant.id}")).text.count("Loja Azul") >= 1

        row = page.locator("tr", has_text=member.email)
        await row.locator("select").select_option("agent")
        await expect(page.locator(".notice")).to_have_text("Salvo.")
        members = (await client.get("/api/v1/members", headers=admin.headers)).json()
        assert {m["email"]: m["role"] for m in members}[member.email] == "agent"

        await page.fill("#key-name", "crm")
        await page.click("form[action='/settings/api-keys'] button")
        key = (await page.locator("#new-key").inner_text()).strip()
        assert key.startswith("papo_sk_")
        assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        await page.goto(f"{live_url}/settings")
        assert key not in await page.content()  # shown once
        await page.locator("tr", has_text="crm").locator("button").click()
        await expect(page.locator("tr", has_text="crm")).to_contain_text("Revogada")
        assert (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})).status_code == 401
        assert errors == []

        await context.clear_cookies()
        outsider = await context.new_page()
        await sign_in(outsider, live_url, member)
        response = await outsider.goto(f"{live_url}/settings")
        assert response is not None
        assert response.status == 404

    async def test_activity_chart_shows_the_tenants_month(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Chart")
        admin = await tenant.member(Role.admin)
        member = await tenant.member()
        chat = await create_session(client, member)
        for text in ("Adorei o atendimento, muito obrigado!", "Péssimo, estou muito irritado", "Tudo certo"):
            await send_over_api(client, member, chat["id"], text)
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin, next_path="/settings")
        chart = page.locator("#activity-chart")
        await expect(chart).to_be_visible()
        assert await chart.locator("g").count() == 30
        today = chart.locator("g").last
        assert "3 de pessoas" in (await today.locator("title").text_content() or "")
        assert float(await today.locator("rect.bar-user").get_attribute("height") or 0) > 0
        await expect(page.locator(".figures")).to_contain_text("Mensagens")
        await page.locator("#activity-chart").scroll_into_view_if_needed()
        await screenshot(page, "settings-activity")
        assert errors == []

    async def test_webhooks_page_adds_tests_and_replays(
        self, context: BrowserContext, live_url: str, make_tenant: Any
    ) -> None:
        admin = await (await make_tenant("Hooks")).member(Role.admin)
        receiver = WebhookReceiver()
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin, next_path="/settings")
        await page.click("a[href='/settings/webhooks']")
        await page.fill("#hook-url", f"{receiver.url}/crm")
        await page.check("input[value='message.created']")
        await page.click("form[action='/settings/webhooks'] button[type=submit]")
        secret = (await page.locator("#new-secret").inner_text()).strip()
        assert secret.startswith("whsec_")
        await page.click("text=Enviar um teste")
        await expect(page.locator(".notice")).to_have_text("Na fila.")
        (delivery,) = await receiver.wait_for(1)
        Webhook(secret).verify(delivery.body, delivery.headers)
        await page.reload()
        await expect(page.locator("tr.delivery-delivered")).to_have_count(1)
        await page.click("tr.delivery-delivered button")
        await receiver.wait_for(2)
        await page.goto(f"{live_url}/settings/webhooks")
        await expect(page.locator("tr.delivery-delivered")).to_have_count(2)
        await screenshot(page, "settings-webhooks")
        assert errors == []

    async def test_knowledge_page_builds_a_collection_an_assistant_answers_from(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Base")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        assistant_id = await default_assistant(client, tenant, fake_openai[1], "fake-echo")
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin, next_path="/settings")
        await page.click("a[href='/settings/knowledge']")
        await page.fill("#collection-name", "Políticas")
        await page.click("form[action='/settings/knowledge/collections'] button[type=submit]")
        await expect(page.locator(".notice")).to_have_text("Coleção criada.")
        await page.fill("#collection-name", "Políticas")  # the same name again is refused, said why
        await page.click("form[action='/settings/knowledge/collections'] button[type=submit]")
        await expect(page.locator(".alert")).to_contain_text("already exists")
        collection = page.locator(".collection").first
        await collection.locator("input[type=file]").set_input_files(
            files=[{"name": "politicas.pdf", "mimeType": "application/pdf", "buffer": make_pdf(POLICIES)}]
        )
        await collection.locator("form.upload button").click()
        await expect(page.locator(".notice")).to_have_text("Adicionado: está sendo lido agora.")
        ready = page.locator(".collection tr.document-ready")
        await expect(ready).to_have_count(1, timeout=20_000)  # the page follows the reading by itself
        await expect(ready.locator("td").nth(2)).not_to_have_text("0")
        await collection.locator("input[type=url]").fill("http://10.0.0.9/intranet")
        await collection.locator("input[type=url]").press("Enter")
        await expect(page.locator(".alert")).to_be_visible()  # a private address is refused
        chooser = page.locator(f"form[data-assistant='{assistant_id}']")
        await chooser.locator("input[type=checkbox]").check()
        await chooser.locator("button").click()
        await expect(page.locator(".notice")).to_have_text("Salvo.")
        await expect(page.locator(f"form[data-assistant='{assistant_id}'] input[type=checkbox]")).to_be_checked()
        await page.locator(".collection").first.scroll_into_view_if_needed()
        await screenshot(page, "settings-knowledge")

        reply = await ask_over_api(client, member, assistant_id, "qual o prazo para devolver um produto?")
        assert reply["metadata"]["knowledge"]["sources"][0]["title"] == "politicas.pdf"
        assert errors == []


class TestSafety:
    async def test_script_payloads_render_inert(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant: TenantHandle = await make_tenant("Xss")
        await default_assistant(client, tenant, fake_openai[1], "fake-echo")
        member = await tenant.member()
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, member)
        await open_new_chat(page, live_url)
        payload = (
            '<script>window.pwned=1</script> <img src=x onerror="window.pwned=2"> '
            '[clique](javascript:window.pwned=3) <a href="javascript:alert(1)">x</a> **ok**'
        )
        await send(page, payload)
        await expect(page.locator('.msg.assistant[data-state="complete"]')).to_have_count(1, timeout=10_000)
        answer = page.locator('.msg.assistant[data-state="complete"] .body')
        await expect(answer.locator("strong")).to_have_text("ok")  # markdown still works
        for selector in ("script:not([src]):not([type])", "img", "[onerror]", 'a[href^="javascript"]'):
            assert await page.locator(f"#messages {selector}").count() == 0, selector
        await send(page, "# título\n\n" + "**negrito** `code` " * 300 + "x" * 20_000)  # huge markdown
        await expect(page.locator('.msg.assistant[data-state="complete"]')).to_have_count(2, timeout=15_000)
        await expect(page.locator("#composer-input")).to_be_editable()
        assert await page.evaluate("window.pwned") is None
        assert errors == []


class TestLook:
    async def test_themes_brand_language_and_phone(
        self, browser: Any, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Brand")
        # a colour that is hard to read on white: papo keeps text on it and links in it readable
        await set_tenant_settings(
            tenant, {"brand": {"name": "Amarelo S.A.", "primary": "#ffee00", "accent": "#00bcd4"}}
        )
        member = await tenant.member(Role.admin)
        chat = await client.post(
            "/api/v1/sessions", json={"title": "Plano anual", "channel": "web"}, headers=member.headers
        )
        sid = chat.json()["id"]
        await client.post(
            f"/api/v1/sessions/{sid}/messages",
            json={"content": "Qual o preço?", "role": "user"},
            headers=member.headers,
        )
        context = await browser.new_context(locale="pt-BR", viewport={"width": 1280, "height": 800})
        try:
            page = await context.new_page()
            errors = watch_errors(page)
            await sign_in(page, live_url, member)
            await expect(page.locator(".brand")).to_contain_text("Amarelo S.A.")
            on_brand = await page.evaluate("getComputedStyle(document.querySelector('button.primary')).color")
            assert on_brand == "rgb(0, 0, 0)"  # black text on yellow
            brand_text = await page.evaluate(
                "getComputedStyle(document.documentElement).getPropertyValue('--brand-text')"
            )
            assert contrast(brand_text.strip(), "#ffffff") >= 4.5
            await screenshot(page, "dashboard-light")
            await page.goto(f"{live_url}/chats/{sid}")
            await screenshot(page, "chat-light")

            await page.click("details.account summary")
            await page.select_option("#pref-theme", "dark")
            await page.wait_for_load_state("load")
            await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(17, 20, 23)"
            await screenshot(page, "chat-dark")
            await page.goto(f"{live_url}/")
            await expect(page.locator("html")).to_have_attribute("data-theme", "dark")  # remembered
            await screenshot(page, "dashboard-dark")

            await page.click("details.account summary")
            await page.select_option("#pref-lang", "en")
            await page.wait_for_load_state("load")
            await expect(page.locator("html")).to_have_attribute("lang", "en")
            await expect(page.locator("#home-input")).to_have_attribute("placeholder", "Write a message…")
            assert errors == []
        finally:
            await context.close()

        phone = await browser.new_context(locale="pt-BR", viewport={"width": 375, "height": 740}, is_mobile=True)
        try:
            page = await phone.new_page()
            await sign_in(page, live_url, member)
            for path in ("/", f"/chats/{sid}"):
                await page.goto(f"{live_url}{path}")
                width = await page.evaluate("document.scrollingElement.scrollWidth")
                assert width <= 375, f"{path} scrolls sideways on a phone ({width}px)"
            await expect(page.locator("#composer-input")).to_be_visible()
            await screenshot(page, "chat-phone")
        finally:
            await phone.close()


class TestSingleSignOn:
    async def test_sign_in_with_an_oidc_provider_joins_or_finds_the_member(
        self, context: BrowserContext, live_url: str, make_tenant: Any, oidc_provider: FakeOidcProvider
    ) -> None:
        tenant: TenantHandle = await make_tenant("Sso")
        await set_tenant_settings(tenant, {"signup_open": True})
        email = f"bia-{tenant.id.hex[:8]}@example.com"
        oidc_provider.identity = {"email": email, "email_verified": True, "name": "Bia"}
        page = await context.new_page()
        errors = watch_errors(page)
        await page.goto(f"{live_url}/login?tenant={tenant.id}")
        await page.click("a.provider:text('Entrar com Acme SSO')")
        await page.wait_for_url(f"{live_url}/")  # joined the open workspace
        await expect(page.locator("details.account summary")).to_have_text(email)

        await context.clear_cookies()
        await page.goto(f"{live_url}/login")  # no workspace in the link: found by e-mail
        await page.click("a.provider")
        await page.wait_for_url(f"{live_url}/")
        await expect(page.locator("details.account summary")).to_have_text(email)

        await context.clear_cookies()
        oidc_provider.identity = {"email": "ghost@example.com", "email_verified": False}
        await page.goto(f"{live_url}/login")
        await page.click("a.provider")
        await expect(page.locator(".alert")).to_contain_text("did not vouch for an e-mail")
        assert errors == []

    async def test_a_forged_callback_signs_nobody_in(self, browser_like: httpx.AsyncClient) -> None:
        http = browser_like
        answer = await http.get("/auth/oidc/callback?code=stolen&state=guess")
        assert answer.status_code == 401
        assert "papo_session" not in answer.headers.get("set-cookie", "")
        assert (await http.get("/auth/nope/start")).status_code == 404


class TestResilience:
    async def test_a_dropped_socket_shows_reconnecting_then_catches_up(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Drop")
        member = await tenant.member()
        sockets: list[WebSocketRoute] = []

        def through(route: WebSocketRoute) -> None:
            route.connect_to_server()  # a real connection to papo, which the test can cut
            sockets.append(route)

        page = await context.new_page()
        await page.route_web_socket(re.compile(r".*/api/v1/realtime$"), through)
        await sign_in(page, live_url, member)
        await page.wait_for_selector("#rt-status[hidden]", state="attached")
        assert sockets, "the page's realtime socket went through the route"
        await sockets[-1].close(code=1011, reason="network went away")
        await expect(page.locator("#rt-status")).to_be_visible()
        await expect(page.locator("#rt-status")).to_have_text("Reconectando…")
        missed = await client.post(
            "/api/v1/sessions", json={"title": "criada durante a queda", "channel": "web"}, headers=member.headers
        )
        await expect(page.locator("#rt-status")).to_be_hidden(timeout=10_000)
        await expect(page.locator(f'.chat-item[data-id="{missed.json()["id"]}"]')).to_have_count(1)

    async def test_an_ended_session_keeps_the_draft_through_sign_in(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Expire")
        member = await tenant.member()
        chat = await client.post(
            "/api/v1/sessions", json={"title": "rascunho", "channel": "web"}, headers=member.headers
        )
        sid = chat.json()["id"]
        page = await context.new_page()
        await sign_in(page, live_url, member, next_path=f"/chats/{sid}")
        await context.clear_cookies(name="papo_session")  # the session ends while the person types
        await page.fill("#composer-input", "uma mensagem longa que eu não quero perder")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r".*/login\?next=.*"))
        await page.fill("input[name=email]", member.email)
        await page.fill("input[name=password]", member.password)
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(f"{live_url}/chats/{sid}")
        await expect(page.locator("#composer-input")).to_have_value("uma mensagem longa que eu não quero perder")


class TestWhatsappPages:
    async def test_admin_scans_a_number_and_an_agent_answers_in_the_inbox(
        self, context: BrowserContext, live_url: str, client: httpx.AsyncClient, make_tenant: Any, app: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Zap")
        admin, agent = await tenant.member(Role.admin), await tenant.member(Role.agent)
        fake = app.state.papo.whatsapp.transports["fake"]
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin, next_path="/whatsapp")
        await expect(page.locator(".wa-session")).to_have_count(0)
        created = await client.post(
            "/api/v1/whatsapp/sessions", json={"name": "loja", "transport": "fake"}, headers=admin.headers
        )
        sid = created.json()["id"]
        item = page.locator(f'.wa-session[data-id="{sid}"]')
        await expect(item.locator("[data-badge]")).to_have_text("SCAN_QR_CODE", timeout=10_000)
        await expect(item.locator("[data-qr] img")).to_be_visible()
        # the SVG loads after the image is shown (a live update may also reload the page): wait for it
        await page.wait_for_function(
            "id => document.querySelector(`.wa-session[data-id='${id}'] [data-qr] img`)?.naturalWidth > 0", arg=sid
        )
        await screenshot(page, "whatsapp-qr")
        key = SessionKey(tenant.id, uuid.UUID(sid))
        await fake.scan(key, "+5511966660000")
        await expect(item.locator("[data-badge]")).to_have_text("WORKING")
        await expect(item.locator("[data-qr]")).to_be_hidden()
        await expect(item.locator("[data-phone]")).to_have_text("+5511966660000")

        await context.clear_cookies()
        await sign_in(page, live_url, agent, next_path="/inbox")
        await expect(page.locator("#conversations .chat-item")).to_have_count(0)
        await fake.customer_writes(key, "Vocês abrem sábado?", wa_id="5511955554444", name="Bruno")
        await expect(page.locator("#conversations .chat-item")).to_have_count(1, timeout=10_000)
        await page.click("#conversations .chat-item a")
        await expect(page.locator("#messages .msg.user .body")).to_have_text("Vocês abrem sábado?")
        await page.fill("#inbox-input", "Abrimos sim, das 9h às 13h.")
        await page.keyboard.press("Enter")
        await expect(page.locator("#messages .msg.assistant .body")).to_have_text("Abrimos sim, das 9h às 13h.")
        await expect(page.locator("#messages .msg.assistant [data-delivery]")).to_have_text("Enviada")
        assert fake.sent[-1][1:3] == ("5511955554444", "Abrimos sim, das 9h às 13h.")
        await fake.customer_writes(key, "Obrigado!", wa_id="5511955554444")
        await expect(page.locator("#messages .msg.user")).to_have_count(2)  # live
        await page.click("[data-inbox-action=assign]")
        await expect(page.locator("#assignee")).to_contain_text(agent.email)
        await page.click("[data-inbox-action=close]")
        await expect(page.locator("[data-inbox-action=reopen]")).to_be_visible()
        await screenshot(page, "inbox")
        assert errors == []

    async def test_an_agent_works_the_queue_with_views_notes_saved_replies_and_history(
        self,
        browser: Browser,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        number: tuple[TenantHandle, Member, Member, SessionKey],
        fake: Any,
    ) -> None:
        _, admin, agent, key = number
        saved = {"shortcut": "frete", "content": "O frete para a capital é R$ 15,00."}
        page = await context.new_page()
        errors = watch_errors(page)
        await sign_in(page, live_url, admin, next_path="/settings")  # the admin saves the reply
        await page.fill("#canned-shortcut", saved["shortcut"])
        await page.fill("#canned-content", saved["content"])
        await page.click("#canned-form button[type=submit]")
        await expect(page.locator("tr[data-canned] code")).to_have_text(["/frete"])
        await page.fill("#canned-shortcut", "frete")
        await page.fill("#canned-content", "de novo")
        await page.click("#canned-form button[type=submit]")
        await expect(page.locator(".alert")).to_contain_text("/frete already exists")
        await page.fill("#team-name", "Trocas")
        await page.click("#team-form button[type=submit]")
        team = page.locator("form.team")
        await team.locator(f"input[value='{agent.user_id}']").check()
        await team.locator("button:not(.danger)").click()
        await expect(page.locator(f"form.team input[value='{agent.user_id}']")).to_be_checked()
        await context.clear_cookies()
        inbox = "/api/v1/whatsapp/conversations"
        await fake.customer_writes(key, "meu pedido anterior", wa_id="5511977770001", name="Dora")
        (earlier,) = (await client.get(inbox, headers=agent.headers)).json()
        await client.patch(f"{inbox}/{earlier['id']}", json={"ticket_status": "closed"}, headers=agent.headers)
        await fake.customer_writes(key, "quanto custa o frete?", wa_id="5511977770001", name="Dora")
        await fake.customer_writes(
            key, "Estou muito insatisfeito, o atendimento foi péssimo", wa_id="5511977770002", name="Eli"
        )

        async def someone_unhappy() -> bool:
            listed = (await client.get(inbox, headers=agent.headers)).json()
            return any(c["sentiment"] and c["sentiment"]["last"] == "negative" for c in listed)

        async with asyncio.timeout(15):  # scored in the background: the list marks who is unhappy
            while not await someone_unhappy():  # noqa: ASYNC110  (polling the API, as a client would)
                await asyncio.sleep(0.1)
        await sign_in(page, live_url, agent, next_path="/inbox")
        await expect(page.locator("#conversations .chat-item:has-text('Eli') .mood-negative")).to_have_text(
            "Insatisfeito"
        )
        await expect(page.locator("#conversations .chat-item:has-text('Dora') .mood-negative")).to_have_count(0)
        await page.click("[data-view=mine]")
        await expect(page.locator("#conversations .chat-item")).to_have_count(0)
        await page.click("[data-view=all]")
        await expect(page.locator("#conversations .chat-item")).to_have_count(2)
        await page.click("#conversations .chat-item a:has-text('Dora')")
        await expect(page.locator(".customer .earlier a")).to_have_count(1)  # the closed conversation, beside
        await expect(page.locator(".customer .earlier .preview")).to_have_text("meu pedido anterior")

        await page.check("#inbox-note")
        await page.fill("#inbox-input", "cliente pediu desconto antes")
        await page.keyboard.press("Enter")
        note = page.locator("#messages .msg.note")
        await expect(note.locator(".body")).to_have_text("cliente pediu desconto antes")
        await expect(note.locator(".who")).to_have_text("Nota privada")
        assert not any("desconto" in text for _, _, text, _ in fake.sent)  # only the team saw it
        await page.uncheck("#inbox-note")

        await page.fill("#inbox-input", "")
        await page.type("#inbox-input", "/fr")
        await expect(page.locator("#canned [role=option]")).to_have_count(1)
        await screenshot(page, "inbox-canned")
        await page.keyboard.press("Enter")
        await expect(page.locator("#inbox-input")).to_have_value(saved["content"])
        await page.keyboard.press("Enter")
        await expect(page.locator("#messages .msg.assistant .body").last).to_have_text(saved["content"])
        assert fake.sent[-1][2] == saved["content"]

        await fake.customer_writes(key, "ainda aqui", wa_id="5511977770002")  # Eli, while Dora is open
        eli = page.locator("#conversations .chat-item:has-text('Eli') .badge.unread")
        await expect(eli).to_have_attribute("data-unread", "2")  # live, beside the one not yet read
        await page.fill("#labels-input", "VIP, frete")
        await page.press("#labels-input", "Enter")
        await expect(page.locator(".labels-form .chip")).to_have_text(["vip", "frete"])
        await page.click(".labels-form .chip:text('vip')")
        await expect(page.locator("#conversations .chat-item .title")).to_have_text(["Dora"])
        await page.click("#conversations .chat-item a:has-text('Dora')")

        await page.click("[data-inbox-action=assign]")
        await expect(page.locator("#assignee")).to_contain_text(agent.email)
        await page.goto(f"{live_url}/inbox?view=all")
        await page.click("#conversations .chat-item a:has-text('Dora')")
        async with page.expect_response(lambda answer: answer.request.method == "PATCH") as patched:
            await page.select_option("#team-select", label="Equipe: Trocas")
        assert (await patched.value).ok
        await page.locator("#chat-title").click()  # the keys work from anywhere on the page
        await page.keyboard.press("Alt+ArrowUp")  # the one above in the list (Eli wrote last: first)
        await expect(page.locator("#chat-title")).to_contain_text("Eli")
        await page.goto(f"{live_url}/inbox?view=mine")
        await expect(page.locator("#conversations .chat-item .title")).to_have_text(["Dora"])
        await expect(page.locator("#conversations .chat-item .badge.team")).to_have_text(["Trocas"])
        await page.click("[data-view=team]")
        await expect(page.locator("#conversations .chat-item .title")).to_have_text(["Dora"])
        await page.goto(f"{live_url}/inbox?view=all")
        await page.fill("#inbox-search", "pedido anterior")  # words said, in any ticket status
        await page.press("#inbox-search", "Enter")
        await expect(page.locator("#conversations .chat-item .title")).to_have_text(["Dora"])
        await expect(page.locator(".label-filter")).to_contain_text("pedido anterior")
        await screenshot(page, "inbox-agent")
        assert errors == []

        phone = await browser.new_context(locale="en", viewport={"width": 375, "height": 740}, is_mobile=True)
        try:  # on a phone the conversation's tools open under ⋯, nothing scrolls sideways
            page = await phone.new_page()
            errors = watch_errors(page)
            await sign_in(page, live_url, agent, next_path="/inbox")
            await page.click("[data-drawer]")
            await page.click("#conversations .chat-item a:has-text('Dora')")
            await expect(page.locator("#team-select")).to_be_hidden()
            assert await page.evaluate("document.scrollingElement.scrollWidth") <= 375
            await page.click("[data-head-tools]")
            await expect(page.locator("[data-head-tools]")).to_have_attribute("aria-expanded", "true")
            await expect(page.locator("#labels-input")).to_be_focused()
            await expect(page.locator("#team-select")).to_be_visible()
            await expect(page.locator("[data-inbox-action=assign]")).to_be_in_viewport()
            assert await page.evaluate("document.scrollingElement.scrollWidth") <= 375
            await screenshot(page, "inbox-phone-tools")
            await page.keyboard.press("Escape")
            await expect(page.locator("#team-select")).to_be_hidden()
            await expect(page.locator("[data-head-tools]")).to_be_focused()
            assert errors == []
        finally:
            await phone.close()


def tiny_png(width: int = 40, height: int = 30) -> bytes:
    """A real PNG (a solid colour), so the browser can draw the thumbnail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x20\x80\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class TestInboxMedia:
    async def test_a_customers_photo_voice_note_document_and_location_appear_live(
        self,
        context: BrowserContext,
        live_url: str,
        client: httpx.AsyncClient,
        cloud_number: Any,
        graph_api: Any,
        database: Any,
    ) -> None:
        tenant, _, _, number = cloud_number
        agent = await tenant.member(Role.agent)
        page = await context.new_page()
        errors = watch_errors(page)
        hello = {"from": "5511988887777", "id": "wamid.hi", "timestamp": "1", "type": "text", "text": {"body": "Oi"}}
        await deliver(client, database, number, hello)
        await sign_in(page, live_url, agent, next_path="/inbox")
        await page.click("#conversations .chat-item a")
        await expect(page.locator("#messages .msg.user")).to_have_count(1)
        photo, voice = new_media(graph_api, tiny_png(), "image/png"), new_media(graph_api, OGG, "audio/ogg")
        pdf = new_media(graph_api, PDF, "application/pdf")
        await deliver(
            client,
            database,
            number,
            media_message("wamid.ph", "5511988887777", "image", photo, caption="comprovante", mime_type="image/png"),
            media_message("wamid.vo", "5511988887777", "audio", voice, voice=True),
            media_message("wamid.pd", "5511988887777", "document", pdf, filename="boleto.pdf"),
            {"from": "5511988887777", "id": "wamid.lo", "timestamp": "2", "type": "location",
             "location": {"latitude": -23.55, "longitude": -46.63, "name": "Loja Centro"}},
        )  # fmt: skip
        image = page.locator("#messages .attachment.image img")
        await expect(image).to_be_visible(timeout=10_000)  # live: pending, then the stored photo
        await page.wait_for_function("() => document.querySelector('.attachment.image img').naturalWidth === 40")
        await expect(page.locator("#messages .attachment.voice audio")).to_have_count(1)
        document = page.locator("#messages .attachment.document a.file")
        await expect(document).to_contain_text("boleto.pdf")
        await expect(document).to_contain_text("KB")
        location = page.locator("#messages .attachment.location a")
        await expect(location).to_contain_text("Loja Centro")
        assert "openstreetmap.org" in (await location.get_attribute("href") or "")
        await screenshot(page, "inbox-media")
        await page.reload()  # the same, rendered by the server
        await expect(page.locator("#messages .attachment")).to_have_count(4)
        await expect(page.locator("#messages .msg.user .body").nth(1)).to_have_text("comprovante")

        await page.locator("#messages .attachment.image a").click()  # the photo opens in the viewer
        viewer = page.locator("#viewer")
        await expect(viewer).to_be_visible()
        await expect(viewer.locator(".caption")).to_have_text("comprovante")
        await viewer.locator("[data-close]").click()
        await expect(viewer).to_be_hidden()
        voice_player = page.locator("#messages .attachment.voice audio")
        assert (await voice_player.bounding_box() or {"width": 0})["width"] > 150  # visible without a transcript

        await page.fill("#inbox-input", "segue a segunda via")  # the agent answers with a PDF
        await page.set_input_files(
            "#inbox-file", files=[{"name": "segunda via.pdf", "mimeType": "application/pdf", "buffer": PDF}]
        )
        await expect(page.locator("#inbox-pending .name")).to_have_text("segunda via.pdf")  # waits to be sent
        before = len(graph_api.sent)
        await page.click("#inbox-reply button[type=submit]")
        sent = page.locator("#messages .msg.assistant").last
        await expect(sent.locator(".attachment.document a.file")).to_contain_text("segunda via.pdf")
        await expect(sent.locator(".body")).to_have_text("segue a segunda via")
        await expect(sent.locator("[data-delivery]")).to_have_text("Enviada")
        assert graph_api.sent[-1]["document"]["filename"] == "segunda via.pdf"
        assert len(graph_api.sent) == before + 1
        await expect(page.locator("#inbox-input")).to_have_value("")
        await expect(page.locator("#inbox-pending")).to_be_hidden()

        await page.set_input_files(  # a refusal is said in the page's language, nothing is sent
            "#inbox-file", files=[{"name": "vazio.pdf", "mimeType": "application/pdf", "buffer": b""}]
        )
        await page.click("#inbox-reply button[type=submit]")
        await expect(page.locator("#inbox-error")).to_have_text("O arquivo está vazio")
        assert len(graph_api.sent) == before + 1
        assert errors == []
