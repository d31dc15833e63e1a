"""The message POST's lane before FastAPI's routing (papo.chat.post_lane): what it answers is what the
API's own route answers, and everything else reaches that route unchanged."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.chat.posts_at_once import PostsAtOnce
from papo.settings import Settings
from tests.chat.test_api import assert_problem
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session, send


async def test_a_remembered_callers_post_is_answered_by_the_lane_as_the_route_would(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    member = await (await make_tenant("Lane")).member()
    newcomer = await (await make_tenant("Lane too")).member()
    posts: PostsAtOnce = app.state.papo.posts
    sid = (await create_session(client, member))["id"]  # remembers the caller
    statements = posts.statements
    laned = await client.post(
        f"/api/v1/sessions/{sid}/messages",
        json={"content": "pela faixa", "metadata": {"bbb": [1, 2], "a": 2}},  # jsonb orders the keys
        headers=member.headers | {"X-Request-ID": "lane-1"},
    )
    assert posts.statements == statements + 1
    assert laned.status_code == 201 and laned.headers["content-type"] == "application/json"
    assert laned.headers["x-request-id"] == "lane-1" and laned.headers["x-content-type-options"] == "nosniff"
    assert laned.headers["ratelimit-policy"]
    read = await client.get(f"/api/v1/sessions/{sid}/messages/{laned.json()['id']}", headers=member.headers)
    assert laned.content == read.content  # byte for byte: the metadata as stored
    # the same POST by a caller seen for the first time: the route's answer has the same shape
    first_sid = (await create_session(client, newcomer))["id"]
    app.state.papo.principals.entries.clear()
    routed = await client.post(
        f"/api/v1/sessions/{first_sid}/messages",
        json={"content": "pela rota", "metadata": {"k": [1, 2]}},
        headers=newcomer.headers,
    )
    assert routed.status_code == 201 and routed.headers["content-type"] == "application/json"
    assert set(routed.json()) == set(laned.json())
    assert posts.statements == statements + 1  # the route wrote it in its own unit of work


async def test_bodies_the_lane_does_not_take_get_the_routes_answer(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    member = await (await make_tenant("Bad bodies")).member()
    posts: PostsAtOnce = app.state.papo.posts
    sid = (await create_session(client, member))["id"]
    url = f"/api/v1/sessions/{sid}/messages"
    statements = posts.statements
    json_headers = member.headers | {"Content-Type": "application/json"}
    for body in (
        '{"content": "x", "tenant_id": "00000000-0000-0000-0000-000000000000"}',  # an unknown field
        '{"content": "x", "role": "tool"}',
        '{"content": 5}',
        '{"content": "x"',  # not JSON
        '["content"]',
        "[" * 100_000,  # deeper than the JSON parser goes
    ):
        response = await client.post(url, content=body, headers=json_headers)
        assert response.status_code in (400, 413, 422), (body[:40], response.text)
        assert response.headers["x-request-id"]
    as_text = await client.post(
        url, content='{"content": "x"}', headers=member.headers | {"Content-Type": "text/plain"}
    )
    assert as_text.status_code == 422, as_text.text
    assert posts.statements == statements  # none of them reached the database
    history = await client.get(url, headers=member.headers)
    assert history.json()["items"] == []

    # other spellings of a chat id that uuid.UUID reads are the route's to judge (pydantic's rules)
    for form in (f"urn:uuid:{sid}", "{" + sid + "}", sid.replace("-", "")):
        judged = await client.post(f"/api/v1/sessions/{form}/messages", json={"content": "x"}, headers=member.headers)
        assert judged.status_code in (201, 404, 422), (form, judged.text)
    assert posts.statements == statements  # none of them went through the lane
    # a session id that is not one, another company's chat, an empty message
    assert (
        await client.post("/api/v1/sessions/not-a-uuid/messages", json={"content": "x"}, headers=member.headers)
    ).status_code == 422
    stranger_sid = (await create_session(client, await (await make_tenant("Other")).member()))["id"]
    assert_problem(
        await client.post(f"/api/v1/sessions/{stranger_sid}/messages", json={"content": "x"}, headers=member.headers),
        404,
    )
    assert_problem(await client.post(url, json={"content": "   "}, headers=member.headers), 422)
    # the other methods of the path are the other routes'
    assert (await client.get(url, headers=member.headers)).status_code == 200
    assert (await client.delete(url, headers=member.headers)).status_code == 405
    assert "post" in (await client.get("/openapi.json")).json()["paths"]["/api/v1/sessions/{session_id}/messages"]
    # named routes are still found past the lane (request.url_for, redirects)
    assert app.url_path_for("send_message", session_id=sid) == url


async def test_a_post_handed_over_is_counted_once_against_the_limit(
    settings: Settings, database: ProvisionedDatabase, make_tenant: Any
) -> None:
    from papo.app import create_app

    application = create_app(settings.model_copy(update={"rate_limit_user_messages_per_minute": 3}))
    tenant = await make_tenant("Counted")
    member = await tenant.member()
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://papo.test") as http,
    ):
        sid = (await create_session(http, member))["id"]
        await send(http, member, sid, "one")
        await send(http, member, sid, "two")
        # the member is made an admin behind the process's back: the lane's statement is refused
        # (the remembered role no longer holds) and the route authenticates the caller again
        owner = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            await owner.execute(
                "UPDATE memberships SET role = 'admin' WHERE tenant_id = $1 AND user_id = $2",
                tenant.id,
                member.user_id,
            )
        finally:
            await owner.close()
        third = await http.post(f"/api/v1/sessions/{sid}/messages", json={"content": "three"}, headers=member.headers)
        assert third.status_code == 201, third.text
        assert third.headers["ratelimit-remaining"] == "0"
        fourth = await http.post(f"/api/v1/sessions/{sid}/messages", json={"content": "four"}, headers=member.headers)
        assert_problem(fourth, 429)
        history = await http.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)
        assert [m["content"] for m in history.json()["items"]] == ["one", "two", "three"]
