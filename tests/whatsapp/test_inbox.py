"""The WhatsApp inbox through the fake transport: customers in, agents out, handoff, receipts."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from papo.auth.models import Role
from papo.chat.channel import ChannelConversations
from papo.client import RealtimeClient, RealtimeEvent
from papo.whatsapp.transports.base import InboundMessage, InboundReceipt, SessionKey
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY
from tests.fake_whatsapp import FakeTransport
from tests.support import WHATSAPP_SESSIONS as BASE
from tests.support import Member, TenantHandle
from tests.whatsapp.test_ownership import trigger_of_the_test

INBOX = "/api/v1/whatsapp/conversations"


async def echo_bot_answers(client: httpx.AsyncClient, admin: Member, key: SessionKey, provider_url: str) -> None:
    """The number gets an assistant on the fake provider that echoes what it is told."""
    assistant = await client.post(
        "/api/v1/assistants",
        json={"name": "Bot", "model": "fake-echo", "base_url": provider_url, "api_key": API_KEY},
        headers=admin.headers,
    )
    assert assistant.status_code == 201, assistant.text
    answered = await client.patch(
        f"{BASE}/{key.session_id}", json={"assistant_id": assistant.json()["id"]}, headers=admin.headers
    )
    assert answered.status_code == 200, answered.text


async def test_customer_in_agent_out_with_receipts(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    live_url: str,
) -> None:
    _, _, agent, key = number
    realtime = RealtimeClient(live_url, agent.token)
    stream = realtime.events()
    first = asyncio.create_task(anext(stream))
    await asyncio.wait_for(realtime.connected.wait(), 5)

    wamid = await fake.customer_writes(key, "Olá, meu pedido não chegou", wa_id="5511988887777", name="Carla")
    await fake.customer_writes(key, "Olá, meu pedido não chegou", wa_id="5511988887777", external_id=wamid)  # retry
    await fake.customer_writes(key, "", wa_id="5511988887777", kind="sticker")
    conversations = (await client.get(INBOX, headers=agent.headers)).json()
    assert len(conversations) == 1
    conversation = conversations[0]
    assert conversation["contact_name"] == "Carla"
    assert conversation["wa_id"] == "5511988887777"
    assert conversation["ticket_status"] == "open"
    messages = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    assert [m["content"] for m in messages] == ["Olá, meu pedido não chegou", "[unsupported message: sticker]"]
    assert messages[1]["metadata"]["unsupported"] == "sticker"

    sent = await client.post(
        f"{INBOX}/{conversation['id']}/messages", json={"content": "Vou verificar, Carla!"}, headers=agent.headers
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["delivery_status"] == "pending"
    assert fake.sent[-1][1:3] == ("5511988887777", "Vou verificar, Carla!")
    external_id = fake.sent[-1][3]
    reply_id = sent.json()["id"]

    async def delivery() -> str | None:
        rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
        found: str | None = next(m["delivery_status"] for m in rows if m["id"] == reply_id)
        return found

    assert await delivery() == "sent"
    await fake.receipt(key, external_id, "read")
    await fake.receipt(key, external_id, "delivered")  # late and out of order: ignored
    await fake.receipt(key, external_id, "failed")  # after read: ignored
    assert await delivery() == "read"

    seen: list[str] = []
    event = await asyncio.wait_for(first, 5)
    async with asyncio.timeout(5):
        while True:
            if isinstance(event, RealtimeEvent):
                seen.append(event.event)
                if event.event == "message.status_changed" and event.data.get("delivery_status") == "read":
                    break
            event = await anext(stream)
    await stream.aclose()
    assert seen.count("message.created") == 3  # the retried delivery announced nothing
    assert "whatsapp.conversation.updated" in seen


async def test_handoff_assignment_close_and_bad_input(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    make_tenant: Any,
) -> None:
    tenant, admin, agent, key = number
    assistant = await client.post("/api/v1/assistants", json={"name": "Bot", "model": "demo"}, headers=admin.headers)
    await client.patch(f"{BASE}/{key.session_id}", json={"assistant_id": assistant.json()["id"]}, headers=admin.headers)
    await fake.customer_writes(key, "quero saber do frete", wa_id="5521900001111", name="Davi")
    conversation = (await client.get(INBOX, headers=agent.headers)).json()[0]
    assert conversation["bot_enabled"] is True  # the number has an assistant
    await fake.customer_writes(key, "Quero falar com um ATENDENTE, por favor!", wa_id="5521900001111")
    handed = (await client.get(f"{INBOX}?ticket_status=pending", headers=agent.headers)).json()
    assert [c["id"] for c in handed] == [conversation["id"]]
    assert handed[0]["bot_enabled"] is False

    url = f"{INBOX}/{conversation['id']}"
    assigned = await client.patch(
        url, json={"assigned_to": agent.user_id, "ticket_status": "open"}, headers=agent.headers
    )
    assert assigned.json()["assigned_to"] == agent.user_id
    member = await tenant.member(Role.member)
    assert (await client.patch(url, json={"assigned_to": member.user_id}, headers=agent.headers)).status_code == 422
    assert (await client.patch(url, json={"ticket_status": "lost"}, headers=agent.headers)).status_code == 422
    closed = await client.patch(url, json={"ticket_status": "closed", "bot_enabled": True}, headers=agent.headers)
    assert closed.json()["ticket_status"] == "closed"
    refused = await client.post(f"{url}/messages", json={"content": "oi"}, headers=agent.headers)
    assert refused.status_code == 409
    await fake.customer_writes(key, "voltei", wa_id="5521900001111")  # a new ticket for the same contact
    open_now = (await client.get(f"{INBOX}?ticket_status=open", headers=agent.headers)).json()
    assert len(open_now) == 1
    assert open_now[0]["id"] != conversation["id"]
    reopen = await client.patch(url, json={"ticket_status": "open"}, headers=agent.headers)
    assert reopen.status_code == 409

    assert (await client.get(INBOX, headers=member.headers)).status_code == 403
    outsider = await (await make_tenant("Fora")).member(Role.admin)
    assert (await client.get(INBOX, headers=outsider.headers)).json() == []
    for method, path in (("GET", f"{url}/messages"), ("PATCH", url), ("POST", f"{url}/messages")):
        body = {"content": "x"} if method == "POST" else {}
        answer = await client.request(method, path, headers=outsider.headers, json=body)
        assert answer.status_code == 404, (method, path)


async def test_a_failed_send_keeps_the_reply_with_its_reason(
    client: httpx.AsyncClient, number: tuple[TenantHandle, Member, Member, SessionKey], fake: FakeTransport
) -> None:
    _, admin, agent, key = number
    await fake.customer_writes(key, "oi", wa_id="5531977776666")
    conversation = (await client.get(INBOX, headers=agent.headers)).json()[0]
    await client.patch(f"{BASE}/{key.session_id}", json={"config": {"fail_send": True}}, headers=admin.headers)
    sent = await client.post(f"{INBOX}/{conversation['id']}/messages", json={"content": "olá"}, headers=agent.headers)
    assert sent.status_code == 201
    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    reply = rows[-1]
    assert reply["content"] == "olá"
    assert reply["delivery_status"] == "failed"
    assert reply["status"] == "error"
    assert "refused" in reply["metadata"]["error"]


async def test_the_bot_answers_until_the_customer_asks_for_a_human(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    fake_openai: tuple[Any, str],
) -> None:
    _, admin, agent, key = number
    await echo_bot_answers(client, admin, key, fake_openai[1])

    await fake.customer_writes(key, "qual o horário de vocês?", wa_id="5541933334444", name="Ana")
    async with asyncio.timeout(10):  # the bot's reply goes out through the number
        while True:
            if any(text == "Echo: qual o horário de vocês?" for _, _, text, _ in fake.sent):
                break
            await asyncio.sleep(0.05)
    conversation = (await client.get(INBOX, headers=agent.headers)).json()[0]
    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    bot = rows[-1]
    assert bot["metadata"]["author"] == "bot"
    assert bot["delivery_status"] == "sent"
    assert bot["external_id"].startswith("wamid.fake-")

    sent_before = len(fake.sent)
    await fake.customer_writes(key, "prefiro falar com um humano", wa_id="5541933334444")
    await asyncio.sleep(0.5)
    assert len(fake.sent) == sent_before  # the bot stepped back
    handed = (await client.get(f"{INBOX}?ticket_status=pending", headers=agent.headers)).json()
    assert [c["id"] for c in handed] == [conversation["id"]]


async def test_a_new_customers_first_messages_at_once_open_one_conversation(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
) -> None:
    """Two processes may each take in a first message of the same new customer: the contact and the
    conversation are made once (the second waits on the contact's unique index, and then finds the
    conversation only by trying to open it too), and both messages are in it."""
    _, _, agent, key = number
    texts = [f"mensagem {n}" for n in range(6)]
    await asyncio.gather(*(fake.customer_writes(key, text, wa_id="5511966660000", name="Davi") for text in texts))
    conversations = (await client.get(INBOX, headers=agent.headers)).json()
    assert [(c["wa_id"], c["contact_name"]) for c in conversations] == [("5511966660000", "Davi")]
    messages = (await client.get(f"{INBOX}/{conversations[0]['id']}/messages", headers=agent.headers)).json()
    assert sorted(m["content"] for m in messages) == texts


async def test_a_known_customer_costs_no_contact_write_and_two_conversation_writes_per_message(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    database: ProvisionedDatabase,
) -> None:
    """Each message used to write a new version of its contact (the name, unchanged) and three of its
    conversation; now the contact is written only when its name changes, and the conversation by
    the stamp of the customer's last word and by the message's insert."""
    tenant, _, agent, key = number
    await fake.customer_writes(key, "oi", wa_id="5511955550000", name="Eva")
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    writes = "test_writes_" + secrets.token_hex(4)
    noting = f"IF NEW.tenant_id = '{tenant.id}' THEN INSERT INTO {writes} VALUES (TG_TABLE_NAME); END IF"

    async def written() -> dict[str, int]:
        rows = await owner.fetch(f"SELECT tbl, count(*) AS n FROM {writes} GROUP BY tbl")
        await owner.execute(f"TRUNCATE {writes}")
        return {row["tbl"]: row["n"] for row in rows}

    async def inbound_at() -> Any:
        return await owner.fetchval(
            "SELECT last_inbound_at FROM chat_sessions WHERE tenant_id = $1 AND channel = 'whatsapp'", tenant.id
        )

    await owner.execute(f"CREATE TABLE {writes} (tbl text)")
    try:
        async with (
            trigger_of_the_test(owner, "BEFORE UPDATE ON contacts", noting),
            trigger_of_the_test(owner, "BEFORE UPDATE ON chat_sessions", noting),
        ):
            before = await inbound_at()
            await fake.customer_writes(key, "tudo bem?", wa_id="5511955550000", name="Eva")
            assert await written() == {"chat_sessions": 2}
            await fake.customer_writes(key, "alô", wa_id="5511955550000")  # no name this time: kept
            assert await written() == {"chat_sessions": 2}
            assert await inbound_at() > before
            await fake.customer_writes(key, "sou eu", wa_id="5511955550000", name="Eva Lima")
            assert await written() == {"chat_sessions": 2, "contacts": 1}
    finally:
        await owner.execute(f"DROP TABLE {writes}")
        await owner.close()
    conversations = (await client.get(INBOX, headers=agent.headers)).json()
    assert [(c["contact_name"], c["last_inbound_at"] is not None) for c in conversations] == [("Eva Lima", True)]
    messages = (await client.get(f"{INBOX}/{conversations[0]['id']}/messages", headers=agent.headers)).json()
    assert [m["content"] for m in messages] == ["oi", "tudo bem?", "alô", "sou eu"]


async def test_finding_a_customers_conversation_does_not_walk_the_numbers_other_conversations(
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    database: ProvisionedDatabase,
) -> None:
    """Each message looks up its customer's open conversation (papo_whatsapp_take_in). With 10,000 conversations on the
    number (and statistics that do not know it yet), the lookup is still an index search on the
    customer, not a walk through the number's conversations."""
    tenant, _, _, key = number
    await fake.customer_writes(key, "oi", wa_id="5511900000100", name="Ana")
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "WITH made AS (INSERT INTO contacts (tenant_id, id, wa_id) "
            "  SELECT $1, gen_random_uuid(), '55218' || lpad(n::text, 8, '0') FROM generate_series(1, 10000) n "
            "  RETURNING id) "
            "INSERT INTO chat_sessions (tenant_id, id, title, channel, ticket_status, whatsapp_session_id, contact_id) "
            "SELECT $1, gen_random_uuid(), 'x', 'whatsapp', 'open', $2, id FROM made",
            tenant.id,
            key.session_id,
        )
        looking = owner.transaction()
        await looking.start()
        try:

            def message_from(wa_id: str, name: str) -> list[Any]:
                return [tenant.id, key.session_id, None, [wa_id], [name], [name], *([uuid.uuid4()] for _ in range(3)),
                        [f"wamid.plan-{wa_id}"], ["oi"], ["{}"]]  # fmt: skip

            take_in = "SELECT * FROM papo_whatsapp_take_in($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            # once for another customer first: the function's statements are planned then (reading the catalogs)
            await owner.fetch(take_in, *message_from("5511900000101", "Bia"))
            plan = await owner.fetchval(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + take_in, *message_from("5511900000100", "Ana")
            )
        finally:
            await looking.rollback()
    finally:
        await owner.close()
    root = json.loads(plan)[0]["Plan"]
    # ~85 pages for the whole message (contact, conversation, the message and its indexes, the row
    # read back); a walk through the number's conversations reads ~250 more (10,000 rows)
    assert root["Shared Hit Blocks"] + root["Shared Read Blocks"] < 150, root


async def test_a_run_of_messages_is_stored_together_and_each_follows_the_inbox_rules(
    client: httpx.AsyncClient,
    app: FastAPI,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    fake_openai: tuple[Any, str],
    live_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane's deliveries reach the inbox together: each run of messages between receipts is stored
    by one statement, and each message is then handled as if it had come alone: a handoff early in
    the run holds for the customer's later messages, a message delivered before is stored once, and
    the staff's stream hears each message followed by its conversation, in order."""
    _, admin, agent, key = number
    await echo_bot_answers(client, admin, key, fake_openai[1])
    known = await fake.customer_writes(key, "bom dia", wa_id="5511944440002", name="Bruno")

    runs: list[int] = []
    take_in = ChannelConversations.take_in

    async def counted(self: ChannelConversations, *args: Any) -> Any:
        runs.append(len(args[2]))
        return await take_in(self, *args)

    monkeypatch.setattr(ChannelConversations, "take_in", counted)
    realtime = RealtimeClient(live_url, agent.token)
    stream = realtime.events()
    first = asyncio.create_task(anext(stream))
    await asyncio.wait_for(realtime.connected.wait(), 5)

    ana = "5511944440001"
    arrivals: list[InboundMessage | InboundReceipt] = [
        InboundMessage("wamid.run-1", ana, "Ana", "oi"),
        InboundMessage("wamid.run-2", ana, "Ana", "quero falar com um atendente"),
        InboundMessage("wamid.run-3", ana, "Ana", "ainda aí?"),
        InboundMessage(known, "5511944440002", "Bruno", "bom dia"),  # WhatsApp delivering it again
        InboundReceipt("wamid.nobody-sent-this", "read"),
        InboundMessage("wamid.run-4", "5511944440003", None, "olá"),
    ]
    results = await app.state.papo.whatsapp.take_in(key, arrivals)

    assert runs == [4, 1]  # the receipt between them splits the run
    assert [r is not None and r.message_id is not None for r in results] == [True, True, True, False, False, True]
    oi, handoff, later, again, receipt, carla = results
    assert receipt is None and again is not None and again.message_id is None
    assert oi is not None and oi.bot_enabled and not oi.handed_off
    assert handoff is not None and handoff.handed_off and not handoff.bot_enabled
    assert later is not None and not later.handed_off and not later.bot_enabled  # read after the handoff
    assert carla is not None and carla.bot_enabled

    async with asyncio.timeout(10):  # the bot answers the new customer
        while True:
            if any(to == "5511944440003" for _, to, _, _ in fake.sent):
                break
            await asyncio.sleep(0.05)
    conversations = {c["wa_id"]: c for c in (await client.get(INBOX, headers=agent.headers)).json()}
    assert conversations[ana]["ticket_status"] == "pending" and not conversations[ana]["bot_enabled"]
    assert conversations["5511944440003"]["contact_name"] is None
    assert conversations["5511944440003"]["title"] == "+5511944440003"
    said = (await client.get(f"{INBOX}/{conversations[ana]['id']}/messages", headers=agent.headers)).json()
    assert [m["content"] for m in said if m["role"] == "user"] == ["oi", "quero falar com um atendente", "ainda aí?"]
    bruno = conversations["5511944440002"]["id"]
    assert len((await client.get(f"{INBOX}/{bruno}/messages", headers=agent.headers)).json()) == 2  # his, the bot's

    heard: list[tuple[str, str]] = []
    event = await asyncio.wait_for(first, 5)
    async with asyncio.timeout(5):
        while len(heard) < 8:
            if isinstance(event, RealtimeEvent) and event.event in ("message.created", "whatsapp.conversation.updated"):
                if event.event == "message.created" and event.data["role"] == "user":
                    heard.append(("said", event.data["content"]))
                elif event.event == "whatsapp.conversation.updated":
                    heard.append(("ticket", f"{event.data['wa_id']} {event.data['ticket_status']}"))
            event = await anext(stream)
    assert heard == [
        ("said", "oi"),
        ("ticket", f"{ana} open"),
        ("said", "quero falar com um atendente"),
        ("ticket", f"{ana} pending"),
        ("said", "ainda aí?"),
        ("ticket", f"{ana} pending"),
        ("said", "olá"),
        ("ticket", "5511944440003 open"),
    ]
