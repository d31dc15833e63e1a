"""Assistants with collections answer from the company's documents and cite them, or say they do
not know without asking the model; on WhatsApp the answer carries a source line and "I don't know"
hands the conversation to a person."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from papo.auth.models import Role
from papo.settings import Settings
from papo.whatsapp.transports.base import SessionKey
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.fake_whatsapp import FakeTransport
from tests.knowledge.documents import make_pdf
from tests.knowledge.test_knowledge_api import POLICIES, collection, upload, wait_indexed
from tests.support import WHATSAPP_SESSIONS, Member, TenantHandle

INBOX = "/api/v1/whatsapp/conversations"


async def knowledgeable_assistant(client: httpx.AsyncClient, admin: Member, body: dict[str, Any]) -> str:
    """An assistant answering from a collection holding POLICIES (indexed)."""
    made = await client.post("/api/v1/assistants", json=body, headers=admin.headers)
    assert made.status_code == 201, made.text
    assistant_id = str(made.json()["id"])
    collection_id = await collection(client, admin)
    sent = await upload(client, admin, collection_id, "politicas.pdf", make_pdf(POLICIES))
    assert (await wait_indexed(client, admin, sent.json()["id"]))["state"] == "ready"
    attached = await client.put(
        f"/api/v1/assistants/{assistant_id}/collections",
        json={"collection_ids": [collection_id]},
        headers=admin.headers,
    )
    assert attached.status_code == 200, attached.text
    return assistant_id


async def ask(client: httpx.AsyncClient, who: Member, assistant_id: str, question: str) -> dict[str, Any]:
    """Post a question in a new chat and wait for the finished reply."""
    chat = await client.post(
        "/api/v1/sessions", json={"title": "Dúvida", "assistant_id": assistant_id}, headers=who.headers
    )
    sent = await client.post(
        f"/api/v1/sessions/{chat.json()['id']}/messages", json={"content": question}, headers=who.headers
    )
    assert sent.status_code == 201, sent.text
    reply_id = sent.headers["X-Reply-Id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = (
            await client.get(f"/api/v1/sessions/{chat.json()['id']}/messages/{reply_id}", headers=who.headers)
        ).json()
        if reply["reply_state"] != "streaming":
            return dict(reply)
        await asyncio.sleep(0.05)
    raise AssertionError("the reply did not finish")


async def test_a_reply_is_drawn_from_the_documents_and_cites_them(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, base_url = fake_openai
    tenant = await make_tenant("Citada")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    body = {"name": "Suporte", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY}
    assistant_id = await knowledgeable_assistant(client, admin, body)

    reply = await ask(client, member, assistant_id, "Qual é o prazo para devolver um produto?")
    assert reply["reply_state"] == "complete", reply
    knowledge = reply["metadata"]["knowledge"]
    assert knowledge["found"] is True
    first = knowledge["sources"][0]
    assert (first["n"], first["title"], first["page"]) == (1, "politicas.pdf", 1)
    assert "30 dias" in first["excerpt"]
    # what the model was shown: its instructions to cite, and the numbered passage
    prompt = fake.requests[-1]["messages"]
    shown = next(m["content"] for m in prompt if m["role"] == "system" and "[1]" in m["content"])
    assert "cite the passages" in shown and "[1] politicas.pdf (p. 1)" in shown and "30 dias corridos" in shown


async def test_a_question_the_documents_do_not_answer_is_not_guessed(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str], settings: Settings
) -> None:
    fake, base_url = fake_openai
    tenant = await make_tenant("Honesta")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    body = {"name": "Suporte", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY}
    assistant_id = await knowledgeable_assistant(client, admin, body)
    asked = fake.calls["fake-echo"]
    reply = await ask(client, member, assistant_id, "Vocês vendem bicicletas elétricas?")
    assert reply["content"] == settings.knowledge_unknown_reply
    assert reply["metadata"]["knowledge"] == {"found": False, "sources": []}
    assert reply["metadata"]["finish_reason"] == "knowledge_not_found"
    assert fake.calls["fake-echo"] == asked  # the model was never asked (it could have made something up)


async def test_the_offline_demo_shows_the_cited_answer(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Demo")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    assistant_id = await knowledgeable_assistant(client, admin, {"name": "Demo", "provider": "demo", "model": "demo"})
    reply = await ask(client, member, assistant_id, "Quanto custa o frete para o interior?")
    assert "R$ 25,00" in reply["content"] and "[1]" in reply["content"], reply["content"]
    assert reply["metadata"]["knowledge"]["sources"][0]["page"] == 3


async def test_whatsapp_answers_carry_their_source_and_an_unknown_question_goes_to_a_person(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    fake_openai: tuple[FakeOpenAI, str],
    settings: Settings,
) -> None:
    _, admin, agent, key = number
    body = {"name": "Bot", "model": "fake-echo", "base_url": fake_openai[1], "api_key": API_KEY}
    assistant_id = await knowledgeable_assistant(client, admin, body)
    await client.patch(
        f"{WHATSAPP_SESSIONS}/{key.session_id}", json={"assistant_id": assistant_id}, headers=admin.headers
    )

    async def sent_text(containing: str) -> str:
        """What the number sent this test's customer (the fake transport serves every test)."""
        async with asyncio.timeout(15):
            while True:
                for _, to, text, _ in fake.sent:
                    if to == "5541922221111" and containing in text:
                        return str(text)
                await asyncio.sleep(0.05)

    await fake.customer_writes(key, "qual o horário de atendimento no sábado?", wa_id="5541922221111", name="Bia")
    answered = await sent_text("Echo: qual o horário")
    assert answered.endswith("Fonte: politicas.pdf, p. 2"), answered

    await fake.customer_writes(key, "vocês consertam geladeiras?", wa_id="5541922221111")
    await sent_text(settings.knowledge_handoff_reply)
    conversation = (await client.get(INBOX, headers=agent.headers)).json()[0]
    assert conversation["bot_enabled"] is False  # a person takes it from here
    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    assert rows[-1]["metadata"]["knowledge"]["found"] is False

    sent_before = len(fake.sent)
    await fake.customer_writes(key, "e o frete?", wa_id="5541922221111")
    await asyncio.sleep(0.5)
    assert len(fake.sent) == sent_before  # the bot stepped back
