"""A remembered caller's messages, written together by one statement (migrations 0041 and 0042): the
same message, the same event, the same refusals as the full request path."""

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
from papo.chat.posts_at_once import PostsAtOnce
from papo.chat.replies import AnsweredChats
from papo.chat.schemas import MessageOut
from papo.db.engine import Database, Resumption, ResumptionRefused
from papo.errors import InvalidInput, NotFound
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


def remembered_as(tenant_id: uuid.UUID, user_id: str, role: Role = Role.member) -> Resumption:
    """A caller as the principal cache hands it over after an earlier authentication."""
    return Recalled(Principal(tenant_id, user_id, role.value), None).resumption()


async def give_an_assistant(owner: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """The chat gets an assistant behind the process's back (its user messages then start replies)."""
    assistant_id = uuid.uuid4()
    await owner.execute(
        "INSERT INTO assistants (tenant_id, id, name, model) VALUES ($1, $2, 'Bot', 'm')", tenant_id, assistant_id
    )
    await owner.execute(
        "UPDATE chat_sessions SET assistant_id = $1 WHERE tenant_id = $2 AND id = $3",
        assistant_id,
        tenant_id,
        session_id,
    )


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
    remembered = remembered_as(tenant.id, member.user_id)
    posts = PostsAtOnce(db, settings)
    stored = await posts.post(remembered, sid, MessageRole.user, "olá", {"k": 1})
    assert stored is not None and stored.session_id == sid and stored.metadata == {"k": 1}

    # a user's message in a chat with an assistant starts a reply: the full path's, nothing written here
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await give_an_assistant(owner, tenant.id, sid)
    finally:
        await owner.close()
    stored_count = "SELECT count(*) FROM messages WHERE tenant_id = $1 AND session_id = $2"
    before = await owner_count(database, stored_count, tenant.id, sid)
    assert await posts.post(remembered, sid, MessageRole.user, "oi", None) is None
    assert await owner_count(database, stored_count, tenant.id, sid) == before == 1
    # an assistant's message written through the API answers nobody: it is stored at once
    written = await posts.post(remembered, sid, MessageRole.assistant, "resposta", None)
    assert written is not None and written.role == "assistant"

    # a principal the database no longer confirms writes nothing
    gone = remembered_as(tenant.id, member.user_id, Role.admin)
    try:
        await posts.post(gone, sid, MessageRole.assistant, "x", None)
        raise AssertionError("a role the member does not hold was accepted")
    except ResumptionRefused:
        pass


async def test_posts_arriving_together_share_one_statement_and_each_gets_its_own_answer(
    db: Database,
    settings: Settings,
    make_tenant: Any,
    client: httpx.AsyncClient,
    database: ProvisionedDatabase,
) -> None:
    tenant = await make_tenant("Together")
    member = await tenant.member()
    stranger = await (await make_tenant("Elsewhere")).member()
    own, hot, deleted, answered = [uuid.UUID((await create_session(client, member))["id"]) for _ in range(4)]
    foreign = uuid.UUID((await create_session(client, stranger))["id"])
    assert (await client.delete(f"/api/v1/sessions/{deleted}", headers=member.headers)).status_code == 204
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await give_an_assistant(owner, tenant.id, answered)
        remembered = remembered_as(tenant.id, member.user_id)
        posts = PostsAtOnce(db, settings, writers=1)
        targets = [own, hot, foreign, hot, deleted, answered, hot]
        outcomes = await asyncio.gather(
            *(posts.post(remembered, chat, MessageRole.user, f"m{n}", {"n": n}) for n, chat in enumerate(targets)),
            return_exceptions=True,
        )
        assert posts.statements == 1  # all seven arrived while none was being written

        stored = [outcome for outcome in outcomes if not isinstance(outcome, BaseException) and outcome is not None]
        assert [message.content for message in stored] == ["m0", "m1", "m3", "m6"]
        assert isinstance(outcomes[2], NotFound) and isinstance(outcomes[4], NotFound)  # another company's, deleted
        assert outcomes[5] is None  # a user's message to an assistant: the full path writes it
        rows = await owner.fetch(
            "SELECT id, session_id, content, created_at FROM messages WHERE session_id = ANY($1) ORDER BY created_at",
            [own, hot, foreign, deleted, answered],
        )
        assert [(row["id"], row["content"], row["created_at"]) for row in rows] == [
            (message.id, message.content, message.created_at) for message in stored
        ]
        # the hot chat's three, in the order they arrived, and its activity is its last one's
        last = await owner.fetchval("SELECT last_message_at FROM chat_sessions WHERE id = $1", hot)
        assert last == stored[-1].created_at
        for message in stored:
            assert await announced(owner, str(message.id)) == json.loads(
                MessageOut.model_validate(message).model_dump_json()
            )
        assert (
            await owner.fetchval(
                "SELECT count(*) FROM events WHERE type = 'message.created' AND tenant_id = $1", tenant.id
            )
            == 4
        )
    finally:
        await owner.close()


async def test_a_statement_that_fails_writes_each_post_alone(
    db: Database, settings: Settings, make_tenant: Any, client: httpx.AsyncClient, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Alone")
    member = await tenant.member()
    sid = uuid.UUID((await create_session(client, member))["id"])
    remembered = remembered_as(tenant.id, member.user_id)
    posts = PostsAtOnce(db, settings, writers=1)
    # a NUL inside metadata passes the API's checks and fails the statement in PostgreSQL (jsonb)
    outcomes = await asyncio.gather(
        posts.post(remembered, sid, MessageRole.user, "antes", None),
        posts.post(remembered, sid, MessageRole.user, "ruim", {"k": "a\x00b"}),
        posts.post(remembered, sid, MessageRole.user, "depois", None),
        return_exceptions=True,
    )
    assert posts.statements == 4  # the three together, then each alone
    assert isinstance(outcomes[1], InvalidInput)
    assert [getattr(outcome, "content", None) for outcome in outcomes] == ["antes", None, "depois"]
    assert await owner_count(database, "SELECT count(*) FROM messages WHERE session_id = $1", sid) == 2

    # a caller the database no longer confirms gets that answer for every post, from one statement
    gone = remembered_as(tenant.id, member.user_id, Role.admin)
    refused = await asyncio.gather(
        *(posts.post(gone, sid, MessageRole.user, "x", None) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, ResumptionRefused) for outcome in refused)
    assert posts.statements == 5


async def test_a_locked_chat_sends_its_posts_to_the_full_path_and_holds_up_no_other_caller(
    db: Database, settings: Settings, make_tenant: Any, client: httpx.AsyncClient, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Locked")
    stuck, free = await tenant.member(), await tenant.member()
    locked_sid = uuid.UUID((await create_session(client, stuck))["id"])
    free_sid = uuid.UUID((await create_session(client, free))["id"])
    callers = {who.user_id: remembered_as(tenant.id, who.user_id) for who in (stuck, free)}
    posts = PostsAtOnce(db, settings, writers=2)
    finished: list[str] = []

    async def post(who: str, chat: uuid.UUID, content: str) -> Any:
        outcome = await posts.post(callers[who], chat, MessageRole.user, content, None)
        finished.append(content)
        return outcome

    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        async with owner.transaction():  # a long transaction holding the chat's row
            await owner.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", locked_sid)
            first = asyncio.create_task(post(stuck.user_id, locked_sid, "stuck 1"))
            async with asyncio.timeout(10):
                while not posts.writing:  # noqa: ASYNC110  (the writer's own state, no event to wait on)
                    await asyncio.sleep(0.01)
            # the same caller's next posts wait for its statement; another caller's go past them
            later = await asyncio.gather(
                post(stuck.user_id, locked_sid, "stuck 2"),
                post(stuck.user_id, locked_sid, "stuck 3"),
                post(free.user_id, free_sid, "free"),
            )
            assert await first is None and later[0] is None and later[1] is None  # the full path's
            assert later[2] is not None and later[2].content == "free"
            assert finished[0] == "free"
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", locked_sid) == 0
    finally:
        await owner.close()


async def test_callers_of_different_companies_posting_together_write_apart(
    db: Database, settings: Settings, make_tenant: Any, client: httpx.AsyncClient, database: ProvisionedDatabase
) -> None:
    first, second = await (await make_tenant("First")).member(), await (await make_tenant("Second")).member()
    chats = {who.user_id: uuid.UUID((await create_session(client, who))["id"]) for who in (first, second)}
    callers = {who.user_id: remembered_as(who.tenant_id, who.user_id) for who in (first, second)}
    posts = PostsAtOnce(db, settings, writers=1)
    outcomes = await asyncio.gather(
        posts.post(callers[first.user_id], chats[first.user_id], MessageRole.user, "mine", None),
        posts.post(callers[second.user_id], chats[second.user_id], MessageRole.user, "theirs", None),
        posts.post(callers[second.user_id], chats[first.user_id], MessageRole.user, "intrusion", None),
        return_exceptions=True,
    )
    assert posts.statements == 2  # one per caller, each under its own row-level security
    assert getattr(outcomes[0], "content", None) == "mine" and getattr(outcomes[1], "content", None) == "theirs"
    assert isinstance(outcomes[2], NotFound)
    assert await owner_count(database, "SELECT count(*) FROM messages WHERE session_id = $1", chats[first.user_id]) == 1


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
