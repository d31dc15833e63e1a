"""What agents work with in the inbox: views (mine / unassigned / all), private notes that never
reach the customer or the bot's model, and the company's canned responses."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from papo.auth.models import Role
from papo.whatsapp.transports.base import SessionKey
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.fake_whatsapp import FakeTransport
from tests.support import WHATSAPP_SESSIONS, Member, TenantHandle

INBOX = "/api/v1/whatsapp/conversations"
CANNED = "/api/v1/whatsapp/canned-responses"


async def conversations(client: httpx.AsyncClient, who: Member, count: int, **params: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while len(found := (await client.get(INBOX, params=params, headers=who.headers)).json()) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return list(found)


async def test_views_split_the_queue_by_who_has_each_conversation(
    client: httpx.AsyncClient, number: tuple[TenantHandle, Member, Member, SessionKey], fake: FakeTransport
) -> None:
    tenant, admin, agent, key = number
    await fake.customer_writes(key, "primeira", wa_id="5511900000001", name="Ana")
    await fake.customer_writes(key, "segunda", wa_id="5511900000002", name="Beto")
    both = await conversations(client, agent, 2)
    ana = next(c for c in both if c["contact_name"] == "Ana")
    taken = await client.patch(f"{INBOX}/{ana['id']}", json={"assigned_to": agent.user_id}, headers=agent.headers)
    assert taken.status_code == 200, taken.text

    mine = (await client.get(INBOX, params={"view": "mine"}, headers=agent.headers)).json()
    assert [c["contact_name"] for c in mine] == ["Ana"]
    unassigned = (await client.get(INBOX, params={"view": "unassigned"}, headers=agent.headers)).json()
    assert [c["contact_name"] for c in unassigned] == ["Beto"]
    assert (await client.get(INBOX, params={"view": "mine"}, headers=admin.headers)).json() == []
    assert len((await client.get(INBOX, params={"view": "all"}, headers=agent.headers)).json()) == 2
    refused = await client.get(INBOX, params={"view": "everything"}, headers=agent.headers)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "view"
    key_holder = await tenant.api_key()
    assert (await client.get(INBOX, params={"view": "mine"}, headers=key_holder.headers)).status_code == 422


async def test_a_private_note_reaches_the_staff_only(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    fake_openai: tuple[FakeOpenAI, str],
    make_tenant: Any,
) -> None:
    tenant, admin, agent, key = number
    provider, base_url = fake_openai
    bot = await client.post(
        "/api/v1/assistants",
        json={"name": "Bot", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY},
        headers=admin.headers,
    )
    await client.patch(
        f"{WHATSAPP_SESSIONS}/{key.session_id}", json={"assistant_id": bot.json()["id"]}, headers=admin.headers
    )
    await fake.customer_writes(key, "oi, quero trocar um produto", wa_id="5511900000003", name="Caio")
    (conversation,) = await conversations(client, agent, 1)
    async with asyncio.timeout(10):
        while not any("Echo: oi" in text for _, _, text, _ in fake.sent):  # noqa: ASYNC110  (the bot answered)
            await asyncio.sleep(0.05)
    sent_before = len(fake.sent)

    note = await client.post(
        f"{INBOX}/{conversation['id']}/notes",
        json={"content": "cliente VIP: oferecer frete grátis"},
        headers=agent.headers,
    )
    assert note.status_code == 201, note.text
    assert note.json()["role"] == "note" and note.json()["delivery_status"] is None
    await asyncio.sleep(0.3)
    assert len(fake.sent) == sent_before  # never sent to the customer

    asked_before = len(provider.requests)
    await fake.customer_writes(key, "e o prazo?", wa_id="5511900000003")
    async with asyncio.timeout(10):
        while len(provider.requests) == asked_before:  # noqa: ASYNC110  (the fake keeps a list)
            await asyncio.sleep(0.05)
    shown = [m["content"] for m in provider.requests[-1]["messages"]]
    assert not any("VIP" in text for text in shown)  # nor to the bot's model

    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    assert any(row["role"] == "note" and "VIP" in row["content"] for row in rows)

    member = await tenant.member()
    path = f"{INBOX}/{conversation['id']}/notes"
    assert (await client.post(path, json={"content": "x"}, headers=member.headers)).status_code == 403
    stranger = await (await make_tenant("Vizinha")).member(Role.agent)
    assert (await client.post(path, json={"content": "x"}, headers=stranger.headers)).status_code == 404
    assert (await client.post(path, json={"content": ""}, headers=agent.headers)).status_code == 422
    chat = await client.post("/api/v1/sessions", json={"title": "x"}, headers=member.headers)
    forged = await client.post(
        f"/api/v1/sessions/{chat.json()['id']}/messages", json={"role": "note", "content": "x"}, headers=member.headers
    )
    assert forged.status_code == 422  # notes are only the inbox's


async def test_canned_responses_are_written_by_admins_and_read_by_the_staff(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant, other = await make_tenant("Respostas"), await make_tenant("Outra empresa")
    admin, agent, member = await tenant.member(Role.admin), await tenant.member(Role.agent), await tenant.member()
    stranger = await other.member(Role.admin)
    body = {"shortcut": "frete", "content": "O frete para a capital é R$ 15,00."}
    made = await client.post(CANNED, json=body, headers=admin.headers)
    assert made.status_code == 201, made.text
    assert (await client.post(CANNED, json=body, headers=admin.headers)).status_code == 409
    assert (await client.post(CANNED, json={**body, "shortcut": "x"}, headers=agent.headers)).status_code == 403
    bad = await client.post(CANNED, json={**body, "shortcut": "Frete Grátis"}, headers=admin.headers)
    assert bad.status_code == 422
    listed = await client.get(CANNED, headers=agent.headers)
    assert [c["shortcut"] for c in listed.json()] == ["frete"]
    assert (await client.get(CANNED, headers=member.headers)).status_code == 403
    assert (await client.get(CANNED, headers=stranger.headers)).json() == []
    assert (await client.delete(f"{CANNED}/{made.json()['id']}", headers=stranger.headers)).status_code == 404
    assert (await client.delete(f"{CANNED}/{made.json()['id']}", headers=admin.headers)).status_code == 204


async def test_unread_counts_are_each_agents_own_and_labels_filter_the_queue(
    client: httpx.AsyncClient, number: tuple[TenantHandle, Member, Member, SessionKey], fake: FakeTransport
) -> None:
    tenant, admin, agent, key = number
    for text in ("oi", "tem alguém aí?", "preciso de ajuda"):
        await fake.customer_writes(key, text, wa_id="5511900000004", name="Fábio")
    (conversation,) = await conversations(client, agent, 1)
    async with asyncio.timeout(10):
        while (await client.get(INBOX, headers=agent.headers)).json()[0]["unread"] < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    read = await client.post(f"{INBOX}/{conversation['id']}/read", headers=agent.headers)
    assert read.status_code == 204
    assert (await client.get(INBOX, headers=agent.headers)).json()[0]["unread"] == 0
    assert (await client.get(INBOX, headers=admin.headers)).json()[0]["unread"] == 3  # the admin has not read it
    await fake.customer_writes(key, "alô?", wa_id="5511900000004")
    async with asyncio.timeout(10):
        while (await client.get(INBOX, headers=agent.headers)).json()[0]["unread"] != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    path = f"{INBOX}/{conversation['id']}"
    labelled = await client.patch(path, json={"labels": ["VIP", "troca", "vip"]}, headers=agent.headers)
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["labels"] == ["vip", "troca"]
    assert [c["id"] for c in (await client.get(INBOX, params={"label": "vip"}, headers=agent.headers)).json()] == [
        conversation["id"]
    ]
    assert (await client.get(INBOX, params={"label": "outro"}, headers=agent.headers)).json() == []
    too_many = await client.patch(path, json={"labels": [f"l{i}" for i in range(11)]}, headers=agent.headers)
    assert too_many.status_code == 422
    not_a_word = await client.patch(path, json={"labels": ["dois termos"]}, headers=agent.headers)
    assert not_a_word.status_code == 422
    assert (await client.get(path + "/messages", headers=agent.headers)).status_code == 200
    member = await tenant.member()
    assert (await client.post(f"{path}/read", headers=member.headers)).status_code == 403


async def test_search_finds_conversations_by_name_number_or_words_and_only_the_companys(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    make_tenant: Any,
) -> None:
    _, _, agent, key = number
    await fake.customer_writes(key, "minha geladeira chegou amassada", wa_id="5511900000005", name="Gabriela")
    await fake.customer_writes(key, "bom dia", wa_id="5511900000006", name="Hugo")
    await conversations(client, agent, 2)

    async def found(q: str, who: Member = agent) -> list[str]:
        response = await client.get(INBOX, params={"q": q}, headers=who.headers)
        assert response.status_code == 200, response.text
        return sorted(c["contact_name"] for c in response.json())

    assert await found("geladeira amassada") == ["Gabriela"]  # what was said
    assert await found("hugo") == ["Hugo"]  # the name, any case
    assert await found("900000006") == ["Hugo"]  # the number
    assert await found("100%_") == []  # LIKE's wildcards are taken literally
    stranger = await (await make_tenant("Outra loja")).member(Role.agent)
    assert await found("geladeira", stranger) == []
    too_long = await client.get(INBOX, params={"q": "x" * 201}, headers=agent.headers)
    assert too_long.status_code == 422


async def test_teams_are_the_companys_staff_and_a_team_view_shows_their_conversations(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    make_tenant: Any,
) -> None:
    tenant, admin, agent, key = number
    teams = "/api/v1/whatsapp/teams"
    made = await client.post(teams, json={"name": "Trocas"}, headers=admin.headers)
    assert made.status_code == 201, made.text
    team_id = made.json()["id"]
    assert (await client.post(teams, json={"name": "trocas"}, headers=admin.headers)).status_code == 409
    assert (await client.post(teams, json={"name": "Outra"}, headers=agent.headers)).status_code == 403
    member = await tenant.member()
    stranger = await (await make_tenant("Concorrente")).member(Role.admin)
    refused = await client.put(f"{teams}/{team_id}/members", json={"user_ids": [member.user_id]}, headers=admin.headers)
    assert refused.status_code == 422  # a plain member is not staff
    foreign = await client.put(
        f"{teams}/{team_id}/members", json={"user_ids": [stranger.user_id]}, headers=admin.headers
    )
    assert foreign.status_code == 422  # nor is another company's admin
    joined = await client.put(f"{teams}/{team_id}/members", json={"user_ids": [agent.user_id]}, headers=admin.headers)
    assert joined.status_code == 204
    assert (await client.get(teams, headers=agent.headers)).json()[0]["member_ids"] == [agent.user_id]
    assert (await client.get(teams, headers=stranger.headers)).json() == []

    await fake.customer_writes(key, "quero trocar", wa_id="5511900000007", name="Iara")
    await fake.customer_writes(key, "outra coisa", wa_id="5511900000008", name="João")
    both = await conversations(client, agent, 2)
    iara = next(c for c in both if c["contact_name"] == "Iara")
    assigned = await client.patch(f"{INBOX}/{iara['id']}", json={"team_id": team_id}, headers=admin.headers)
    assert assigned.status_code == 200 and assigned.json()["team_id"] == team_id
    team_view = (await client.get(INBOX, params={"view": "team"}, headers=agent.headers)).json()
    assert [c["contact_name"] for c in team_view] == ["Iara"]
    assert (await client.get(INBOX, params={"view": "team"}, headers=admin.headers)).json() == []  # not in it
    other_team = await client.post(teams, json={"name": "Deles"}, headers=stranger.headers)
    bad = await client.patch(f"{INBOX}/{iara['id']}", json={"team_id": other_team.json()["id"]}, headers=admin.headers)
    assert bad.status_code == 422  # another company's team is not found here

    assert (await client.delete(f"{teams}/{team_id}", headers=stranger.headers)).status_code == 404
    assert (await client.delete(f"{teams}/{team_id}", headers=admin.headers)).status_code == 204
    after = (await client.get(INBOX, headers=agent.headers)).json()
    assert next(c for c in after if c["contact_name"] == "Iara")["team_id"] is None  # the conversation stays


async def test_a_message_still_being_stored_when_an_agent_reads_counts_as_unread(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    database: ProvisionedDatabase,
) -> None:
    """The customer's message is inserted, the agent reads the conversation, then the message's
    transaction commits (webhook deliveries are stored many to a transaction): the agent never saw
    it, so it is unread."""
    tenant, _, agent, key = number
    await fake.customer_writes(key, "oi", wa_id="5511900000005", name="Gil")
    (conversation,) = await conversations(client, agent, 1)
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        storing = owner.transaction()
        await storing.start()
        await owner.execute(
            "INSERT INTO messages (tenant_id, id, session_id, role, content, status) "
            "VALUES ($1, $2, $3, 'user', 'ainda chegando', 'delivered')",
            tenant.id,
            uuid.uuid4(),
            uuid.UUID(conversation["id"]),
        )
        assert (await client.post(f"{INBOX}/{conversation['id']}/read", headers=agent.headers)).status_code == 204
        await storing.commit()
    finally:
        await owner.close()
    assert (await client.get(INBOX, headers=agent.headers)).json()[0]["unread"] == 1
    assert (await client.post(f"{INBOX}/{conversation['id']}/read", headers=agent.headers)).status_code == 204
    assert (await client.get(INBOX, headers=agent.headers)).json()[0]["unread"] == 0
