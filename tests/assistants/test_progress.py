"""Streaming replies' text saved together: one transaction per caller per round, not per reply."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from papo.assistants.progress import ProgressSaves
from papo.auth.models import Role
from papo.auth.service import Principal
from papo.chat.service import ChatService
from papo.db.engine import Database
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn


async def streaming_replies(db: Database, settings: Settings, principal: Principal, count: int) -> list[uuid.UUID]:
    async with db.transaction(principal.context()) as session:
        chat = ChatService(session, principal, settings)
        assert principal.user_id is not None
        session_id = (await chat.create_chat_session(principal.user_id, "replies")).id
        return [(await chat.add_reply_placeholder(session_id, {})).id for _ in range(count)]


async def test_replies_streaming_together_are_saved_together_and_learn_when_stopped(
    db: Database, settings: Settings, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    company, other_company = await make_tenant("Progress"), await make_tenant("Elsewhere")
    member, outsider = await company.member(), await other_company.member()
    principal = Principal(company.id, member.user_id, Role.member.value)
    intruder = Principal(other_company.id, outsider.user_id, Role.member.value)
    replies = await streaming_replies(db, settings, principal, 20)
    saves = ProgressSaves(db, settings)

    kept = await asyncio.gather(*(saves.save(principal, reply, f"texto {n}") for n, reply in enumerate(replies)))
    assert kept == [True] * 20
    assert saves.rounds <= 2  # the first save's round, then everyone who asked meanwhile

    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        stored = dict(await owner.fetch("SELECT id, content FROM messages WHERE id = ANY($1::uuid[])", replies))
        assert stored == {reply: f"texto {n}" for n, reply in enumerate(replies)}
        await owner.execute("UPDATE messages SET reply_state = 'stopped' WHERE id = $1", replies[0])
        stopped, going, foreign = await asyncio.gather(
            saves.save(principal, replies[0], "depois"),
            saves.save(principal, replies[1], "texto 1, mais"),
            saves.save(intruder, replies[2], "de outra empresa"),
        )
        assert (stopped, going, foreign) == (False, True, False)
        contents = dict(await owner.fetch("SELECT id, content FROM messages WHERE id = ANY($1::uuid[])", replies[:3]))
        assert contents == {replies[0]: "texto 0", replies[1]: "texto 1, mais", replies[2]: "texto 2"}
    finally:
        await owner.close()
