"""Keyset pages over a session while other transactions write to it: nothing skipped, nothing repeated.

Writers hold their transactions open around the insert, so commits land out of start order; with
a timestamp taken at transaction start, a reader would skip the late committer. The insert trigger
takes created_at after locking the session row, so commit order and key order agree."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.chat.models import MessageRole
from papo.chat.service import ChatService, message_cursor
from papo.db.engine import Database
from papo.settings import Settings


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    existing=st.integers(min_value=0, max_value=15),
    page_size=st.integers(min_value=1, max_value=6),
    writers=st.integers(min_value=1, max_value=4),
    per_writer=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**32),
)
async def test_walk_sees_every_message_once(
    make_tenant: Any,
    db: Database,
    settings: Settings,
    existing: int,
    page_size: int,
    writers: int,
    per_writer: int,
    seed: int,
) -> None:
    rng = random.Random(seed)
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    principal = Principal(tenant.id, member.user_id, Role.member.value)

    async with db.transaction(principal.context()) as session:
        chat = await ChatService(session, principal, settings).create_chat_session(member.user_id, "race")
        for i in range(existing):
            await ChatService(session, principal, settings).add_message(chat.id, MessageRole.user, f"pre {i}")

    async def writer(number: int) -> None:
        for i in range(per_writer):
            async with db.transaction(principal.context()) as session:
                await asyncio.sleep(rng.random() * 0.01)
                await ChatService(session, principal, settings).add_message(chat.id, MessageRole.user, f"w{number}-{i}")
                await asyncio.sleep(rng.random() * 0.02)  # commit late, after others started

    seen: list[uuid.UUID] = []
    keys: list[tuple[Any, uuid.UUID]] = []
    cursor: str | None = None

    async def read_page() -> bool:
        nonlocal cursor
        async with db.transaction(principal.context()) as session:
            page = await ChatService(session, principal, settings).get_messages(
                chat.id, member.user_id, after=cursor, limit=page_size
            )
        for message in page.items:
            seen.append(message.id)
            keys.append((message.created_at, message.id))
        if page.items:
            cursor = message_cursor(page.items[-1])
        return page.has_more

    tasks = [asyncio.create_task(writer(n)) for n in range(writers)]
    while not all(task.done() for task in tasks):
        await read_page()
        await asyncio.sleep(rng.random() * 0.01)
    await asyncio.gather(*tasks)
    while await read_page():
        pass

    async with db.transaction(principal.context()) as session:
        everything = await ChatService(session, principal, settings).get_messages(chat.id, member.user_id, limit=None)
    assert len(seen) == len(set(seen)), "a message was repeated"
    assert keys == sorted(keys), "pages went backwards"
    assert seen == [m.id for m in everything.items], "a message was skipped"
    assert len(seen) == existing + writers * per_writer
