"""Conditional GETs: session lists and history pages answer 304 to a current If-None-Match, and any
change the member could see (a message, a rename, a chat opened by the back office, a reply
finishing) gives a new ETag."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from papo.auth.models import Role
from tests.assistants.test_replies import ask, settled
from tests.support import Member, create_session, send


async def tagged(client: httpx.AsyncClient, who: Member, url: str) -> str:
    response = await client.get(url, headers=who.headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "private, no-cache"
    etag: str = response.headers["etag"]
    assert etag.startswith('W/"')
    return etag


async def revalidate(client: httpx.AsyncClient, who: Member, url: str, etag: str) -> httpx.Response:
    return await client.get(url, headers={**who.headers, "If-None-Match": etag})


async def test_lists_and_history_revalidate(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant()
    alice, bob = await tenant.member(), await tenant.member()
    chat = await create_session(client, alice, "plans")
    await send(client, alice, chat["id"], "first")
    urls = [
        "/api/v1/sessions",
        f"/api/v1/sessions/{chat['id']}",
        f"/api/v1/sessions/{chat['id']}/messages?limit=20",
        "/api/chat/session",
        f"/api/chat/message?sessionId={chat['id']}",
    ]
    tags = {url: await tagged(client, alice, url) for url in urls}
    for url, etag in tags.items():
        unchanged = await revalidate(client, alice, url, etag)
        assert unchanged.status_code == 304, url
        assert unchanged.content == b""
        assert unchanged.headers["etag"] == etag
    assert len(set(tags.values())) == len(urls)  # each URL (and query) has its own tag

    # Another member presenting Alice's tag gets a full answer of their own.
    assert (await revalidate(client, bob, "/api/v1/sessions", tags["/api/v1/sessions"])).status_code == 200

    await send(client, alice, chat["id"], "second")
    for url, etag in tags.items():
        assert (await revalidate(client, alice, url, etag)).status_code == 200, url
    history = f"/api/v1/sessions/{chat['id']}/messages?limit=20"
    current = await tagged(client, alice, history)
    renamed = await client.patch(f"/api/v1/sessions/{chat['id']}", json={"title": "new"}, headers=alice.headers)
    assert renamed.status_code == 200
    assert (await revalidate(client, alice, history, current)).status_code == 200

    # A chat the back office opens for Alice changes her list.
    listing = await tagged(client, alice, "/api/v1/sessions")
    key = await tenant.api_key()
    opened = await client.post(
        "/api/v1/chats",
        json={"user": {"email": alice.email}, "title": "from the CRM"},
        headers=key.headers,
    )
    assert opened.status_code == 201, opened.text
    fresh = await revalidate(client, alice, "/api/v1/sessions", listing)
    assert fresh.status_code == 200
    assert "from the CRM" in fresh.text
    # a list tag is not valid for a history URL, nor a wildcard guess for another member
    assert (await revalidate(client, alice, history, fresh.headers["etag"])).status_code == 200
    assert (await revalidate(client, alice, "/api/v1/sessions", "*")).status_code == 304


async def test_nothing_is_tagged_while_a_reply_is_written(client: httpx.AsyncClient, make_tenant: Any) -> None:
    member = await (await make_tenant()).member(Role.member)
    created = await client.post("/api/v1/sessions", json={"assistant_id": "default"}, headers=member.headers)
    sid = created.json()["id"]
    reply_id = await ask(client, member, sid, "Conte uma história longa")
    during = await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)
    assert any(m["reply_state"] == "streaming" for m in during.json()["items"])  # the demo types slowly
    assert "etag" not in during.headers
    assert during.headers["cache-control"] == "no-store"
    await settled(client, member, sid, reply_id)
    for _ in range(200):  # the first exchange also names the chat (one more change to see)
        if (await client.get(f"/api/v1/sessions/{sid}", headers=member.headers)).json()["title"]:
            break
        await asyncio.sleep(0.02)
    after = await tagged(client, member, f"/api/v1/sessions/{sid}/messages")
    assert (await revalidate(client, member, f"/api/v1/sessions/{sid}/messages", after)).status_code == 304
