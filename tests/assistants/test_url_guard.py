"""Tenant-set URLs cannot reach the server's network, through the public API: assistant base URLs
and outbound webhooks refuse every form of a private, loopback or metadata address (nothing is
stored), names resolving inside (when saved or, rebound, when used), redirects into the server's
network; a server-side key goes only to the operator's URL; and failures shown to tenants do not
say what answered on an internal port."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import asyncpg
import httpx
import pytest

from papo import netguard
from papo.auth.models import Role
from papo.settings import Settings
from tests.assistants.test_replies import ai_chat, ask, make_assistant, settled
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.support import Member, StaticResolver, free_port, serve_in_thread

ASSISTANTS = "/api/v1/assistants"
HOOKS = "/api/v1/webhooks"
SECRET_BANNER = "SSH-2.0-OpenSSH_9.6 internal-banner-7f3a"

# Each stands for loopback, a private network or a metadata service, however it is written.
FORBIDDEN_URLS = [
    "http://127.0.0.1:5432/v1",
    "http://2130706433:6379/v1",
    "http://0177.0.0.1/v1",
    "http://0x7f.1/v1",
    "http://127.1:8000/v1",
    "http://localhost:11434/v1",
    "http://[::1]:8000/v1",
    "http://[::ffff:127.0.0.1]/v1",
    "http://[64:ff9b::7f00:1]/v1",
    "http://[2002:7f00:1::1]/v1",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]/latest",
    "http://100.100.100.200/latest",
    "http://100.64.0.1/v1",
    "http://0.0.0.0:8000/v1",
    "http://[::]:8000/v1",
    "http://10.0.0.5:8080/v1",
    "http://[fe80::1]/v1",
    "http://internal.test:8080/v1",  # a name the test resolver points at 127.0.0.1
]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> StaticResolver:
    """The app's name resolution, from a table: public-looking names, and one that resolves inside."""
    resolver = StaticResolver({"public.test": ["8.8.8.8"], "internal.test": ["127.0.0.1"]})
    monkeypatch.setattr(netguard, "default_resolver", resolver)
    return resolver


@pytest.fixture
def strict(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The default policy (the test app otherwise lets 127.0.0.0/8 through for its fakes)."""
    monkeypatch.setattr(settings, "outbound_allowed_targets", [])
    return settings


@pytest.fixture
async def admin(make_tenant: Any) -> Member:
    return await (await make_tenant("Guarded")).member(Role.admin)


async def listed(client: httpx.AsyncClient, who: Member, path: str) -> list[dict[str, Any]]:
    response = await client.get(path, headers=who.headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def refusal(response: httpx.Response, field: str) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] == field
    detail: str = body["detail"]
    return detail


class TestAssistantUrls:
    @pytest.mark.parametrize("url", FORBIDDEN_URLS)
    async def test_private_targets_are_refused_and_nothing_is_stored(
        self, client: httpx.AsyncClient, admin: Member, dns: StaticResolver, strict: Settings, url: str
    ) -> None:
        kept = await make_assistant(client, admin, "https://public.test/v1", "m")
        created = await client.post(
            ASSISTANTS, json={"name": "x", "model": "m", "base_url": url}, headers=admin.headers
        )
        detail = refusal(created, "base_url")
        assert "address not allowed" in detail and "127.0.0.1" not in detail.replace(url, "")
        patched = await client.patch(f"{ASSISTANTS}/{kept}", json={"base_url": url}, headers=admin.headers)
        refusal(patched, "base_url")
        rows = await listed(client, admin, ASSISTANTS)
        assert [(r["id"], r["base_url"]) for r in rows] == [(kept, "https://public.test/v1")]

    async def test_the_operator_allow_list_lets_a_listed_range_or_host_through(
        self,
        client: httpx.AsyncClient,
        make_tenant: Any,
        dns: StaticResolver,
        strict: Settings,
        monkeypatch: pytest.MonkeyPatch,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant = await make_tenant("Intranet")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        fake, base_url = fake_openai
        body = {"name": "local", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY}
        refusal(await client.post(ASSISTANTS, json=body, headers=admin.headers), "base_url")

        monkeypatch.setattr(strict, "outbound_allowed_targets", ["127.0.0.1/32"])
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, "fake-echo"))
        reply = await settled(client, member, sid, await ask(client, member, sid, "pelo intervalo"))
        assert reply["reply_state"] == "complete" and reply["content"] == "Echo: pelo intervalo"

        # A host name listed: the name resolves inside (here, to the fake) and is still let through.
        monkeypatch.setattr(strict, "outbound_allowed_targets", ["ollama.test"])
        dns.table["ollama.test"] = ["127.0.0.1"]
        named = base_url.replace("127.0.0.1", "ollama.test")
        sid = await ai_chat(client, member, await make_assistant(client, admin, named, "fake-echo"))
        reply = await settled(client, member, sid, await ask(client, member, sid, "pelo nome"))
        assert reply["reply_state"] == "complete" and reply["content"] == "Echo: pelo nome"
        assert fake.requests[-1]["messages"][-1]["content"] == "pelo nome"

    async def test_a_name_rebound_inside_after_saving_is_refused_when_used(
        self,
        client: httpx.AsyncClient,
        make_tenant: Any,
        dns: StaticResolver,
        strict: Settings,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant = await make_tenant("Rebind")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        fake, base_url = fake_openai
        dns.table["rebind.test"] = ["8.8.8.8"]
        assistant = await make_assistant(client, admin, base_url.replace("127.0.0.1", "rebind.test"), "fake-echo")
        dns.table["rebind.test"] = ["127.0.0.1"]  # the fake provider listens there
        before = len(fake.requests)
        sid = await ai_chat(client, member, assistant)
        reply = await settled(client, member, sid, await ask(client, member, sid, "olá"))
        assert reply["reply_state"] == "failed"
        assert "address not allowed" in reply["metadata"]["error"]
        assert len(fake.requests) == before

    async def test_a_redirect_into_the_server_is_refused(
        self,
        client: httpx.AsyncClient,
        make_tenant: Any,
        dns: StaticResolver,
        strict: Settings,
        monkeypatch: pytest.MonkeyPatch,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        tenant = await make_tenant("Redirect")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        fake, base_url = fake_openai

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.send_response(307)
                self.send_header("location", f"{base_url}/chat/completions")
                self.send_header("content-length", "0")
                self.end_headers()

        redirector = serve_in_thread(Redirect)
        try:
            # The operator allowed this (public-looking) provider host; it lives on this machine.
            monkeypatch.setattr(strict, "outbound_allowed_targets", ["provider.test"])
            dns.table["provider.test"] = ["127.0.0.1"]
            provider = f"http://provider.test:{redirector.server_address[1]}/v1"
            sid = await ai_chat(client, member, await make_assistant(client, admin, provider, "fake-echo"))
            before = len(fake.requests)
            reply = await settled(client, member, sid, await ask(client, member, sid, "olá"))
            assert reply["reply_state"] == "failed"
            assert "address not allowed" in reply["metadata"]["error"]
            assert len(fake.requests) == before  # the hop to 127.0.0.1 never connected
        finally:
            redirector.shutdown()


class TestServerKeys:
    @pytest.fixture
    def shared_key(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch, fake_openai: tuple[FakeOpenAI, str]
    ) -> str:
        """The operator shares SHARED_KEY with assistants, for its own provider (the fake)."""
        monkeypatch.setenv("PAPO_TEST_SHARED_KEY", API_KEY)
        monkeypatch.setattr(settings, "assistant_key_envs", ["PAPO_TEST_SHARED_KEY"])
        monkeypatch.setattr(settings, "assistant_key_env_urls", {"PAPO_TEST_SHARED_KEY": fake_openai[1]})
        return "PAPO_TEST_SHARED_KEY"

    async def test_a_server_key_goes_only_to_the_operators_url(
        self,
        client: httpx.AsyncClient,
        make_tenant: Any,
        dns: StaticResolver,
        strict: Settings,
        shared_key: str,
        fake_openai: tuple[FakeOpenAI, str],
        database: ProvisionedDatabase,
    ) -> None:
        tenant = await make_tenant("Keys")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        fake, operator_url = fake_openai
        tenant_url = "https://public.test/v1"
        refused = await client.post(
            ASSISTANTS,
            json={"name": "steal", "model": "fake-echo", "base_url": tenant_url, "api_key_env": shared_key},
            headers=admin.headers,
        )
        assert "operator" in refusal(refused, "base_url")
        assert await listed(client, admin, ASSISTANTS) == []

        # Without a URL (or with the operator's own, private as it is) the key is usable…
        with_key = await client.post(
            ASSISTANTS, json={"name": "shared", "model": "fake-echo", "api_key_env": shared_key}, headers=admin.headers
        )
        assert with_key.status_code == 201, with_key.text
        spelled = {"name": "same", "model": "fake-echo", "base_url": operator_url, "api_key_env": shared_key}
        assert (await client.post(ASSISTANTS, json=spelled, headers=admin.headers)).status_code == 201
        assistant = with_key.json()["id"]
        sid = await ai_chat(client, member, assistant)
        reply = await settled(client, member, sid, await ask(client, member, sid, "com a chave"))
        assert reply["reply_state"] == "complete", reply
        # …but a tenant URL cannot be added to it afterwards, nor the key to a tenant URL.
        patched = await client.patch(f"{ASSISTANTS}/{assistant}", json={"base_url": tenant_url}, headers=admin.headers)
        refusal(patched, "base_url")
        own = await make_assistant(client, admin, tenant_url, "fake-echo")
        patched = await client.patch(f"{ASSISTANTS}/{own}", json={"api_key_env": shared_key}, headers=admin.headers)
        refusal(patched, "base_url")
        rows = {r["id"]: r for r in await listed(client, admin, ASSISTANTS)}
        assert (rows[assistant]["base_url"], rows[assistant]["api_key_env"]) == (None, shared_key)
        assert (rows[own]["base_url"], rows[own]["api_key_env"]) == (tenant_url, None)

        # A row written before these rules, pairing the key with another URL: the key still goes
        # only to the operator's URL.
        thief = Listener()
        owner = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            await owner.execute(
                "UPDATE assistants SET base_url = $2 WHERE id = $1", uuid.UUID(assistant), f"{thief.url}/v1"
            )
        finally:
            await owner.close()
        before = len(fake.requests)
        reply = await settled(client, member, sid, await ask(client, member, sid, "de novo"))
        assert reply["reply_state"] == "complete", reply
        assert len(fake.requests) > before and thief.connections == 0
        thief.server.shutdown()


class Listener:
    """A local HTTP server that counts connections and answers 500 with a tell-tale body."""

    def __init__(self) -> None:
        self.connections = 0
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                listener.connections += 1
                body = b"redis_version:7.2.4 " + SECRET_BANNER.encode()
                self.send_response(500)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = serve_in_thread(Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def banner() -> AsyncIterator[int]:
    """A local port that speaks first and is not HTTP (like SSH or an SMTP server)."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SECRET_BANNER.encode() + b"\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.server.shutdown()


class TestFailureTexts:
    """The operator allowed 127.0.0.0/8 here (the test app's setting): even then, what a tenant is told
    about a failure names no banner, body, address or port."""

    async def test_reply_errors_do_not_describe_the_remote(
        self, client: httpx.AsyncClient, make_tenant: Any, banner: int, listener: Listener
    ) -> None:
        tenant = await make_tenant("Scanner")
        admin, member = await tenant.member(Role.admin), await tenant.member()
        closed = free_port()
        for port in (banner, listener.port, closed):
            sid = await ai_chat(client, member, await make_assistant(client, admin, f"http://127.0.0.1:{port}/v1", "m"))
            reply = await settled(client, member, sid, await ask(client, member, sid, "olá"))
            assert reply["reply_state"] == "failed"
            shown = reply["metadata"]["error"] + reply["content"]
            for secret in ("SSH", "OpenSSH", "internal-banner", "redis", str(port), "127.0.0.1"):
                assert secret not in shown, (port, shown)
            assert reply["metadata"]["error"] in {
                "the AI provider is unreachable, or it closed the stream early",
                "the AI provider failed (500)",
            }


class TestWebhookUrls:
    @pytest.mark.parametrize("url", FORBIDDEN_URLS)
    async def test_private_targets_are_refused_and_nothing_is_stored(
        self, client: httpx.AsyncClient, admin: Member, dns: StaticResolver, strict: Settings, url: str
    ) -> None:
        body = {"url": url, "event_types": ["message.created"]}
        assert "address not allowed" in refusal(await client.post(HOOKS, json=body, headers=admin.headers), "url")
        kept = await client.post(
            HOOKS, json={"url": "https://public.test/hook", "event_types": ["message.created"]}, headers=admin.headers
        )
        assert kept.status_code == 201, kept.text
        hook = kept.json()["id"]
        refusal(await client.patch(f"{HOOKS}/{hook}", json={"url": url}, headers=admin.headers), "url")
        assert [(h["id"], h["url"]) for h in await listed(client, admin, HOOKS)] == [(hook, "https://public.test/hook")]

    async def test_delivery_logs_say_little(
        self,
        client: httpx.AsyncClient,
        admin: Member,
        dns: StaticResolver,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        banner: int,
        listener: Listener,
    ) -> None:
        closed = free_port()
        cases = [
            (f"http://127.0.0.1:{listener.port}/hook", "HTTP 500"),
            (f"http://127.0.0.1:{banner}/hook", "receiver unreachable"),
            (f"http://127.0.0.1:{closed}/hook", "receiver unreachable"),
            (f"http://rebind.test:{listener.port}/hook", "address not allowed"),
        ]
        dns.table["rebind.test"] = ["8.8.8.8"]  # public when saved…
        hooks = []
        for url, _ in cases:
            created = await client.post(
                HOOKS, json={"url": url, "event_types": ["session.created"]}, headers=admin.headers
            )
            assert created.status_code == 201, created.text
            hooks.append(created.json()["id"])
        # …and inside when used: at an address the operator did not list (only 127.0.0.1 is, for the rest).
        dns.table["rebind.test"] = ["127.0.0.2"]
        monkeypatch.setattr(settings, "outbound_allowed_targets", ["127.0.0.1/32"])
        for hook in hooks:
            assert (await client.post(f"{HOOKS}/{hook}/test", headers=admin.headers)).status_code == 202
        try:
            for hook, (_, expected) in zip(hooks, cases, strict=True):
                row = await first_attempt(client, admin, hook)
                assert row["last_error"] == expected, row
        finally:
            for hook in hooks:
                await client.delete(f"{HOOKS}/{hook}", headers=admin.headers)
        assert listener.connections >= 1  # only the first hook reached it: the rebound one never did


async def first_attempt(client: httpx.AsyncClient, admin: Member, hook: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            rows = await listed(client, admin, f"{HOOKS}/{hook}/deliveries")
            if rows and rows[0]["attempts"] >= 1:
                return rows[0]
            await asyncio.sleep(0.05)
