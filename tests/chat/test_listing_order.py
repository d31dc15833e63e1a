"""Chat lists are keyed by the minute of activity (migration 0045) and still ordered by the exact
time: across a minute's boundary, within a minute, and page by page."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from papo.auth.models import Role
from papo.pagination import encode_cursor
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, create_session


async def listed(client: httpx.AsyncClient, member: Member, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/sessions", params=params, headers=member.headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_chats_are_listed_by_exact_activity_across_and_within_minutes(
    client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    member = await (await make_tenant()).member(Role.member)
    ids = [(await create_session(client, member, f"chat {n}"))["id"] for n in range(5)]
    moments = [
        datetime(2026, 3, 1, 10, 0, 59, 900_000, tzinfo=UTC),  # the end of one minute
        datetime(2026, 3, 1, 10, 1, 59, 500_000, tzinfo=UTC),  # the next minute, later than the two below
        datetime(2026, 3, 1, 10, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 1, 30, tzinfo=UTC),  # the same moment: the greater id first
        datetime(2026, 3, 1, 9, 59, 59, 999_999, tzinfo=UTC),
    ]
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        for chat, moment in zip(ids, moments, strict=True):
            await owner.execute("UPDATE chat_sessions SET last_message_at = $2 WHERE id = $1", uuid.UUID(chat), moment)
        minutes = await owner.fetch(
            "SELECT id::text, activity_minute FROM chat_sessions WHERE id = ANY($1::uuid[])",
            [uuid.UUID(chat) for chat in ids],
        )
    finally:
        await owner.close()
    assert {row["id"]: row["activity_minute"] for row in minutes} == {
        chat: int(moment.timestamp()) // 60 for chat, moment in zip(ids, moments, strict=True)
    }
    # the chats were created in order (their ids grow): within a minute, the time decides, not the id
    expected = [ids[1], *sorted(ids[2:4], reverse=True), ids[0], ids[4]]
    for limit in (1, 2, 3, 10):
        assert await listed(client, member, limit) == expected


async def test_a_long_chat_list_is_read_in_index_order_not_sorted_whole(
    client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    """A member with 5,000 chats: the first page reads a few index pages, in the index's order of
    minutes, sorting only within a minute."""
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "INSERT INTO chat_sessions (tenant_id, id, user_id, title, last_message_at) "
            "SELECT $1, gen_random_uuid(), $2, 'x', now() - n * interval '17 seconds' FROM generate_series(1, 5000) n",
            tenant.id,
            member.user_id,
        )
        await owner.execute("ANALYZE chat_sessions")
        plan = await owner.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM chat_sessions "
            "WHERE tenant_id = $1 AND user_id = $2 AND status <> 'deleted' AND status = 'active' "
            "ORDER BY activity_minute DESC, activity_at DESC, id DESC LIMIT 21",
            tenant.id,
            member.user_id,
        )
    finally:
        await owner.close()
    root = json.loads(plan)[0]["Plan"]
    text = json.dumps(root)
    assert "ix_chat_sessions_owner_listing" in text, text
    assert '"Sort Method"' not in text or "Incremental Sort" in text, text
    assert root["Shared Hit Blocks"] + root.get("Shared Read Blocks", 0) < 100, root
    assert len(await listed(client, member, 200)) == 5000


async def test_a_forged_cursor_is_refused_with_a_400_and_the_listing_still_works(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    """Cursors are opaque but come from the caller: extreme timestamps (which the driver sends as
    ±infinity, and the minute of which PostgreSQL cannot compute), a timestamp that leaves the
    calendar once in UTC, and parts of the wrong type are each a 400, never a 500."""
    member = await (await make_tenant()).member(Role.member)
    chat = (await create_session(client, member, "mine"))["id"]
    forged = [
        ["0001-01-01T00:00:00+00:00", str(uuid.uuid4())],
        ["9999-12-31T23:59:59.999999+00:00", str(uuid.uuid4())],
        ["0001-01-01T00:30:00+01:00", str(uuid.uuid4())],
        ["2026-03-01T10:00:00+00:00", 123],
        [1700000000, str(uuid.uuid4())],
    ]
    for parts in forged:
        cursor = encode_cursor(*parts)
        for path, name in (("/api/v1/sessions", "cursor"), (f"/api/v1/sessions/{chat}/messages", "after")):
            answer = await client.get(path, params={name: cursor}, headers=member.headers)
            assert answer.status_code == 400, (parts, path, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
    assert await listed(client, member, 10) == [chat]
