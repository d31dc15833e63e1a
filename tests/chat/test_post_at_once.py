"""A remembered caller's message in one statement (migration 0041): the same message, the same event,
the same refusals as the full request path."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from pydantic import TypeAdapter

from papo.auth.models import Role
from papo.auth.principal_cache import PrincipalCache, Recalled
from papo.auth.service import Principal
from papo.chat.models import MessageRole
from papo.chat.replies import AnsweredChats
from papo.chat.service import post_message_at_once
from papo.db.engine import Database, ResumptionRefused
from papo.settings import Settings
from tests.chat.test_api import assert_problem
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session, send


async def announced(owner: asyncpg.Connection, message_id: str) -> dict[str, Any]:
    """The `message.created` event of a message, once it has its position."""
    async with asyncio.timeout(10):
        while True:
            row = await owner.fetchrow(
                "SELECT id, payload FROM events WHERE type = 'message.created' AND payload->>'id' = $1", message_id
            )
            if row is not None and row["id"] is not None:
                payload: dict[str, Any] = json.loads(row["payload"])
                return payload
            await asyncio.sleep(0.05)


async def test_a_remembered_callers_message_is_stored_and_announced_like_any_other(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    member = await (await make_tenant("At once")).member()
    sid = (await create_session(client, member))["id"]  # remembers the caller
    cache: PrincipalCache = app.state.papo.principals
    hits = cache.hits
    first = await send(client, member, sid, "primeira")
    second = await send(client, member, sid, "segunda, com acentuação")
    assert cache.hits == hits + 2
    assert second["created_at"] > first["created_at"]

    read = await client.get(f"/api/v1/sessions/{sid}/messages/{second['id']}", headers=member.headers)
    assert read.json() == second
    session = (await client.get(f"/api/v1/sessions/{sid}", headers=member.headers)).json()
    assert session["last_message_at"] == second["created_at"]
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        assert await announced(owner, second["id"]) == second
        assert await announced(owner, first["id"]) == first
    finally:
        await owner.close()


async def owner_count(database: ProvisionedDatabase, query: str, *args: Any) -> int:
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        count: int = await owner.fetchval(query, *args)
        return count
    finally:
        await owner.close()


async def test_the_statement_posts_only_what_needs_no_reply(
    db: Database,
    settings: Settings,
    make_tenant: Any,
    client: httpx.AsyncClient,
    database: ProvisionedDatabase,
) -> None:
    tenant = await make_tenant("Reply path")
    member = await tenant.member()
    sid = uuid.UUID((await create_session(client, member))["id"])
    remembered = Recalled(Principal(tenant.id, member.user_id, Role.member.value), None).resumption()
    stored = await post_message_at_once(db, settings, remembered, sid, MessageRole.user, "olá", {"k": 1})
    assert stored is not None and stored.session_id == sid and stored.metadata == {"k": 1}

    # a user's message in a chat with an assistant starts a reply: the full path's, nothing written here
    assistant_id = uuid.uuid4()
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "INSERT INTO assistants (tenant_id, id, name, model) VALUES ($1, $2, 'Bot', 'm')", tenant.id, assistant_id
        )
        await owner.execute(
            "UPDATE chat_sessions SET assistant_id = $1 WHERE tenant_id = $2 AND id = $3", assistant_id, tenant.id, sid
        )
    finally:
        await owner.close()
    stored_count = "SELECT count(*) FROM messages WHERE tenant_id = $1 AND session_id = $2"
    before = await owner_count(database, stored_count, tenant.id, sid)
    assert await post_message_at_once(db, settings, remembered, sid, MessageRole.user, "oi", None) is None
    assert await owner_count(database, stored_count, tenant.id, sid) == before == 1
    # an assistant's message written through the API answers nobody: it is stored at once
    written = await post_message_at_once(db, settings, remembered, sid, MessageRole.assistant, "resposta", None)
    assert written is not None and written.role == "assistant"

    # a principal the database no longer confirms writes nothing
    gone = Recalled(Principal(tenant.id, member.user_id, Role.admin.value), None).resumption()
    try:
        await post_message_at_once(db, settings, gone, sid, MessageRole.assistant, "x", None)
        raise AssertionError("a role the member does not hold was accepted")
    except ResumptionRefused:
        pass


async def test_another_companys_chat_bad_text_and_withdrawn_access_change_nothing(
    client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    alice = await (await make_tenant("Victim")).member()
    mallory_company = await make_tenant("Attacker")
    mallory, leaving = await mallory_company.member(), await mallory_company.member()
    victim_sid = (await create_session(client, alice))["id"]
    own_sid = (await create_session(client, mallory))["id"]
    leaving_sid = (await create_session(client, leaving))["id"]
    await send(client, mallory, own_sid, "warm")
    await send(client, leaving, leaving_sid, "warm")

    url = f"/api/v1/sessions/{victim_sid}/messages"
    assert_problem(await client.post(url, json={"content": "oi"}, headers=mallory.headers), 404)
    assert (await client.post(url, json={"content": "oi"}, headers=alice.headers)).status_code == 201
    own = f"/api/v1/sessions/{own_sid}/messages"
    nul, surrogate = '{"content": "a\\u0000b"}', '{"content": "\\ud800"}'
    for bad in (nul, surrogate, '{"content": "ok", "metadata": {"k": "\\ud800"}}'):
        response = await client.post(own, content=bad, headers=mallory.headers | {"Content-Type": "application/json"})
        assert response.status_code == 422, response.text

    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2", mallory_company.id, leaving.user_id
        )
        refused = await client.post(
            f"/api/v1/sessions/{leaving_sid}/messages", json={"content": "depois"}, headers=leaving.headers
        )
        assert refused.status_code == 401, refused.text
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", uuid.UUID(victim_sid)) == 1
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", uuid.UUID(own_sid)) == 1
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", uuid.UUID(leaving_sid)) == 1
    finally:
        await owner.close()


async def test_timestamps_are_written_as_the_api_writes_them(app_role_connection: Any) -> None:
    as_json = TypeAdapter(datetime)
    for moment in (
        datetime(2026, 12, 1, 19, 16, 19, 123456, tzinfo=UTC),
        datetime(2026, 12, 1, 19, 16, 19, 4500, tzinfo=UTC),
        datetime(2026, 12, 1, 19, 16, 19, 0, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ):
        written = await app_role_connection.fetchval("SELECT papo_json_time($1)", moment)
        assert written == as_json.dump_python(moment, mode="json")


def test_chats_seen_starting_replies_are_remembered_for_a_while_and_a_bounded_few() -> None:
    chats = [uuid.uuid4() for _ in range(3)]
    answered = AnsweredChats(size=2, seconds=0.2)
    answered.add(chats[0])
    answered.add(chats[1])
    assert chats[0] in answered and chats[2] not in answered
    answered.add(chats[2])  # the least recently seen goes
    assert chats[0] not in answered and chats[1] in answered and chats[2] in answered
    time.sleep(0.25)  # its assistant may have been taken off: asked again
    assert chats[1] not in answered and not answered.seen.get(chats[1])
