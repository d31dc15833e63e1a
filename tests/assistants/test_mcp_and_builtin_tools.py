"""Tools from a tenant's MCP server (the official SDK on both sides, over real HTTP) and papo's
built-in tools: each call is recorded in the history like an HTTP tool's; a server that fails,
hangs, answers too much or cannot be reached costs the model a tool, never the reply; built-ins
read only what the customer's own conversations hold and hand WhatsApp conversations to a person."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from papo.auth.models import Role
from papo.whatsapp.transports.base import SessionKey
from tests.assistants.test_tools import tool_messages
from tests.fake_mcp import MCP_TOKEN, serving_company_mcp
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.fake_whatsapp import FakeTransport
from tests.knowledge.test_grounded_replies import ask
from tests.support import WHATSAPP_SESSIONS, Member, TenantHandle, send

INBOX = "/api/v1/whatsapp/conversations"


@pytest.fixture
async def company_mcp() -> AsyncIterator[str]:
    async with serving_company_mcp() as url:
        yield url


async def assistant_with_tools(client: httpx.AsyncClient, admin: Member, base_url: str, *tools: dict[str, Any]) -> str:
    made = await client.post(
        "/api/v1/assistants",
        json={"name": "Loja", "model": "fake-tools", "base_url": base_url, "api_key": API_KEY},
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    for tool in tools:
        added = await client.post(f"/api/v1/assistants/{made.json()['id']}/tools", json=tool, headers=admin.headers)
        assert added.status_code == 201, added.text
    return str(made.json()["id"])


def mcp_tool(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "mcp", "name": "loja", "url": url, "authorization": MCP_TOKEN, "timeout_seconds": 2, **extra}


async def test_an_mcp_servers_tools_are_offered_called_and_recorded(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str], company_mcp: str
) -> None:
    fake, base_url = fake_openai
    tenant = await make_tenant("Mcp")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id = await assistant_with_tools(client, admin, base_url, mcp_tool(company_mcp))
    (listed,) = (await client.get(f"/api/v1/assistants/{assistant_id}/tools", headers=admin.headers)).json()
    assert listed["kind"] == "mcp" and listed["has_authorization"] is True
    assert MCP_TOKEN not in json.dumps(listed)  # the credential is never given back

    asked_before = len(fake.requests)
    reply = await ask(client, member, assistant_id, "tool:loja__stock camiseta")
    assert reply["reply_state"] == "complete", reply
    assert '"in_stock": 7' in reply["content"], reply["content"]
    offered = next(r for r in fake.requests[asked_before:] if r.get("tools"))
    assert {t["function"]["name"] for t in offered["tools"]} == {
        "loja__stock",
        "loja__broken",
        "loja__huge",
        "loja__slow",
    }
    (recorded,) = await tool_messages(client, member, reply)
    assert recorded["metadata"]["tool"] == "loja__stock" and recorded["metadata"]["ok"] is True
    assert json.loads(recorded["content"])["asked"] == "camiseta"


@pytest.mark.parametrize(
    ("tool", "error"),
    [
        ("loja__broken", "reported an error"),
        ("loja__huge", "more than 1024 KB"),
        ("loja__slow", "did not answer"),
    ],
)
async def test_a_failing_mcp_tool_is_an_error_result_not_a_lost_reply(
    tool: str,
    error: str,
    client: httpx.AsyncClient,
    make_tenant: Any,
    fake_openai: tuple[FakeOpenAI, str],
    company_mcp: str,
) -> None:
    _, base_url = fake_openai
    tenant = await make_tenant("McpFalha")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id = await assistant_with_tools(client, admin, base_url, mcp_tool(company_mcp))
    reply = await ask(client, member, assistant_id, f"tool:{tool} camiseta")
    assert reply["reply_state"] == "complete", reply
    assert error in reply["content"], reply["content"]
    (recorded,) = await tool_messages(client, member, reply)
    assert recorded["metadata"]["ok"] is False and error in recorded["metadata"]["error"]
    if tool == "loja__broken":  # the server's own words reach the model
        assert "estoque fora do ar" in recorded["content"]


async def test_an_mcp_server_that_cannot_be_listed_leaves_the_reply_without_its_tools(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str], company_mcp: str
) -> None:
    _, base_url = fake_openai
    tenant = await make_tenant("McpFora")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id = await assistant_with_tools(
        client, admin, base_url, mcp_tool(company_mcp, authorization="Bearer wrong")
    )
    reply = await ask(client, member, assistant_id, "tool:loja__stock camiseta")
    assert reply["reply_state"] == "complete" and reply["content"] == "Tool said: no tool", reply
    assert reply["metadata"]["tool_servers_unavailable"] == ["loja"]

    refused = await client.post(
        f"/api/v1/assistants/{assistant_id}/tools",
        json=mcp_tool("http://10.1.2.3/mcp", name="intranet"),
        headers=admin.headers,
    )
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url"
    bad_prefix = await client.post(
        f"/api/v1/assistants/{assistant_id}/tools", json=mcp_tool(company_mcp, name="a__b"), headers=admin.headers
    )
    assert bad_prefix.status_code == 422
    unknown_kind = await client.post(
        f"/api/v1/assistants/{assistant_id}/tools", json={"kind": "shell", "name": "x"}, headers=admin.headers
    )
    assert unknown_kind.status_code == 422


async def test_earlier_conversations_reads_only_the_customers_own(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _, base_url = fake_openai
    tenant, other = await make_tenant("Historico"), await make_tenant("Vizinho")
    admin, member, colleague = await tenant.member(Role.admin), await tenant.member(), await tenant.member()
    stranger = await other.member()
    builtin = {"kind": "builtin", "name": "earlier_conversations"}
    assistant_id = await assistant_with_tools(client, admin, base_url, builtin)
    for who, words in ((member, "minha geladeira atrasou"), (colleague, "a entrega do vizinho atrasou")):
        chat = (await client.post("/api/v1/sessions", json={"title": "antes"}, headers=who.headers)).json()
        await send(client, who, chat["id"], words)
    outsider_chat = (await client.post("/api/v1/sessions", json={"title": "x"}, headers=stranger.headers)).json()
    await send(client, stranger, outsider_chat["id"], "outra empresa atrasou")

    reply = await ask(client, member, assistant_id, "tool:earlier_conversations atrasou")
    assert reply["reply_state"] == "complete", reply
    (recorded,) = await tool_messages(client, member, reply)
    found = json.loads(recorded["content"])["conversations"]
    assert [c["title"] for c in found] == ["antes"]
    assert [m["text"] for m in found[0]["messages"]] == ["minha geladeira atrasou"]

    offered = await client.get(f"/api/v1/assistants/{assistant_id}/tools", headers=member.headers)
    assert offered.json()[0]["parameters"]["properties"]["query"]["type"] == "string"


async def test_the_bot_hands_a_whatsapp_conversation_to_a_person_when_it_decides_to(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    fake_openai: tuple[FakeOpenAI, str],
) -> None:
    fake_provider, base_url = fake_openai
    _, admin, agent, key = number
    builtin = {"kind": "builtin", "name": "hand_over_to_person"}
    assistant_id = await assistant_with_tools(client, admin, base_url, builtin)
    await client.patch(
        f"{WHATSAPP_SESSIONS}/{key.session_id}", json={"assistant_id": assistant_id}, headers=admin.headers
    )
    await fake.customer_writes(key, "tool:hand_over_to_person quero falar com alguém", wa_id="5541933334444")
    async with asyncio.timeout(15):
        while not any("handed_over" in text for _, _, text, _ in fake.sent):  # noqa: ASYNC110  (the fake keeps a list)
            await asyncio.sleep(0.05)
    conversation = (await client.get(INBOX, headers=agent.headers)).json()[0]
    assert conversation["bot_enabled"] is False and conversation["ticket_status"] == "pending"
    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    assert any(row["role"] == "tool" and row["metadata"]["tool"] == "hand_over_to_person" for row in rows)

    # in a member's own chat there is nobody to hand over to: the tool is not offered
    member = await number[0].member()
    before = len(fake_provider.requests)
    await ask(client, member, assistant_id, "tool:hand_over_to_person oi")
    assert not any(r.get("tools") for r in fake_provider.requests[before:])
