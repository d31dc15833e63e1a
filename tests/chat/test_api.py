"""Sessions and messages through /api/v1 and the seed-000 endpoints, including bad input."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from typing import Any

import httpx
import pytest

from papo.auth.models import Role
from papo.chat.service import purge_deleted_sessions
from papo.db.engine import Database
from tests.support import Member, create_session, send


@pytest.fixture
async def alice(make_tenant: Any) -> Member:
    tenant = await make_tenant()
    member: Member = await tenant.member(Role.member)
    return member


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["x-request-id"]
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:papo:problem:")
    assert body["title"]
    assert body["detail"]
    return body


class TestSessions:
    async def test_lifecycle(self, client: httpx.AsyncClient, alice: Member) -> None:
        created = await create_session(client, alice, "  Plano   de viagem ")
        assert created["title"] == "Plano de viagem"
        assert created["status"] == "active"
        assert created["user_id"] == alice.user_id
        assert created["last_message_at"] is None
        sid = created["id"]

        patched = await client.patch(
            f"/api/v1/sessions/{sid}", json={"metadata": {"a": 1, "b": {"c": 2}}}, headers=alice.headers
        )
        assert patched.json()["metadata"] == {"a": 1, "b": {"c": 2}}
        assert patched.json()["title"] == "Plano de viagem"  # not sent, not changed
        patched = await client.patch(
            f"/api/v1/sessions/{sid}", json={"metadata": {"a": None, "d": "x"}, "title": "Novo"}, headers=alice.headers
        )
        assert patched.json()["metadata"] == {"b": {"c": 2}, "d": "x"}
        assert patched.json()["title"] == "Novo"
        assert patched.json()["updated_at"] > created["updated_at"]

        archived = await client.post(f"/api/v1/sessions/{sid}/archive", headers=alice.headers)
        assert archived.json()["status"] == "archived"
        active = (await client.get("/api/v1/sessions", headers=alice.headers)).json()["items"]
        assert sid not in [s["id"] for s in active]
        listed = (await client.get("/api/v1/sessions?status=archived", headers=alice.headers)).json()["items"]
        assert [s["id"] for s in listed] == [sid]
        restored = await client.post(f"/api/v1/sessions/{sid}/unarchive", headers=alice.headers)
        assert restored.json()["status"] == "active"

        assert (await client.delete(f"/api/v1/sessions/{sid}", headers=alice.headers)).status_code == 204
        assert_problem(await client.get(f"/api/v1/sessions/{sid}", headers=alice.headers), 404)
        assert_problem(
            await client.post(f"/api/v1/sessions/{sid}/messages", json={"content": "x"}, headers=alice.headers), 404
        )

    async def test_soft_delete_keeps_rows_until_purge_cascades(
        self, client: httpx.AsyncClient, alice: Member, app_role_connection: Any
    ) -> None:
        sid = (await create_session(client, alice))["id"]
        await send(client, alice, sid, "one")
        await send(client, alice, sid, "two")
        await client.delete(f"/api/v1/sessions/{sid}", headers=alice.headers)

        async def count(table: str, column: str) -> int:
            async with app_role_connection.transaction():
                await app_role_connection.execute(
                    "SELECT papo_set_context($1, $2, 'member')", alice.tenant_id, alice.user_id
                )
                value: int = await app_role_connection.fetchval(
                    f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid.UUID(sid)
                )
                return value

        assert await count("messages", "session_id") == 2
        purged = await client.delete(f"/api/v1/sessions/{sid}?purge=true", headers=alice.headers)
        assert purged.status_code == 204
        assert await count("messages", "session_id") == 0
        assert await count("chat_sessions", "id") == 0

    async def test_listing_orders_by_activity_and_pages(self, client: httpx.AsyncClient, alice: Member) -> None:
        ids = [(await create_session(client, alice, f"s{i}"))["id"] for i in range(5)]
        await send(client, alice, ids[1], "bump")  # s1 becomes the most recent activity
        expected = [ids[1], ids[4], ids[3], ids[2], ids[0]]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/sessions", params=params, headers=alice.headers)).json()
            seen += [s["id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected
        bumped = (await client.get(f"/api/v1/sessions/{ids[1]}", headers=alice.headers)).json()
        assert bumped["last_message_at"] is not None

    async def test_bad_input(self, client: httpx.AsyncClient, alice: Member) -> None:
        sid = (await create_session(client, alice))["id"]
        h = alice.headers
        body = assert_problem(
            await client.post("/api/v1/sessions", json={"tenant_id": str(uuid.uuid4())}, headers=h), 422
        )
        assert body["errors"][0]["field"] == "body.tenant_id"
        assert_problem(await client.post("/api/v1/sessions", json={"user_id": "someone"}, headers=h), 422)
        assert_problem(await client.post("/api/v1/sessions", json={"title": 5}, headers=h), 422)
        assert_problem(await client.post("/api/v1/sessions", json={"title": "x" * 201}, headers=h), 422)
        assert_problem(await client.post("/api/v1/sessions", json={"metadata": {"k": "v" * 17000}}, headers=h), 422)
        assert_problem(await client.post("/api/v1/sessions", json={"metadata": [1]}, headers=h), 422)
        assert_problem(await client.post("/api/v1/sessions", json={"channel": "whatsapp"}, headers=h), 422)
        assert_problem(
            await client.post("/api/v1/sessions", content=b"{nope", headers={**h, "content-type": "application/json"}),
            400,
        )
        assert_problem(await client.get("/api/v1/sessions?status=nonsense", headers=h), 422)
        assert_problem(await client.get("/api/v1/sessions?status=deleted", headers=h), 400)
        assert_problem(await client.get("/api/v1/sessions?cursor=garbage", headers=h), 400)
        assert_problem(await client.get("/api/v1/sessions/not-a-uuid", headers=h), 422)
        assert_problem(await client.patch(f"/api/v1/sessions/{sid}", json={"status": "deleted"}, headers=h), 422)
        # Metadata that is fine alone but too large once merged: refused, nothing written.
        await client.patch(f"/api/v1/sessions/{sid}", json={"metadata": {"a": "v" * 9000}}, headers=h)
        assert_problem(
            await client.patch(f"/api/v1/sessions/{sid}", json={"metadata": {"b": "v" * 9000}}, headers=h), 422
        )
        stored = (await client.get(f"/api/v1/sessions/{sid}", headers=h)).json()
        assert set(stored["metadata"]) == {"a"}

        msgs = f"/api/v1/sessions/{sid}/messages"
        assert_problem(await client.post(msgs, json={"content": ""}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "   \n"}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "x" * (32 * 1024 + 1)}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "a\u0000b"}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "x", "role": "wizard"}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "x", "session_id": sid}, headers=h), 422)
        assert_problem(await client.post(msgs, json={"content": "x", "status": "delivered"}, headers=h), 422)
        assert_problem(await client.post(msgs, content=b"x" * (2 * 1024 * 1024), headers=h), 413)
        assert_problem(
            await client.post(
                msgs, content=b"[" * 5000 + b"]" * 5000, headers={**h, "content-type": "application/json"}
            ),
            400,
        )
        page = (await client.get(msgs, headers=h)).json()
        assert page["items"] == []  # none of the above wrote anything

    async def test_unauthenticated(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/api/v1/sessions"), 401)
        assert "Bearer" in body["detail"]
        assert_problem(await client.get("/api/chat/session", headers={"Authorization": "Basic abc"}), 401)


class TestMessages:
    async def test_send_list_patch(self, client: httpx.AsyncClient, alice: Member) -> None:
        sid = (await create_session(client, alice))["id"]
        first = await send(client, alice, sid, "Olá, mundo")
        assert first["role"] == "user"
        assert first["status"] == "sent"
        system = await client.post(
            f"/api/v1/sessions/{sid}/messages",
            json={"content": "Be brief.", "role": "system", "metadata": {"source": "test"}},
            headers=alice.headers,
        )
        assert system.status_code == 201
        assert system.json()["metadata"] == {"source": "test"}
        assert system.json()["created_at"] > first["created_at"]

        mid = first["id"]
        url = f"/api/v1/sessions/{sid}/messages/{mid}"
        patched = await client.patch(
            url, json={"status": "delivered", "metadata": {"read": True}}, headers=alice.headers
        )
        assert patched.json()["status"] == "delivered"
        assert patched.json()["metadata"] == {"read": True}
        assert patched.json()["content"] == "Olá, mundo"
        assert_problem(await client.patch(url, json={"status": "lost"}, headers=alice.headers), 422)
        assert_problem(await client.patch(url, json={"content": "rewritten"}, headers=alice.headers), 422)
        assert (await client.get(url, headers=alice.headers)).json()["status"] == "delivered"

        session = (await client.get(f"/api/v1/sessions/{sid}", headers=alice.headers)).json()
        assert session["last_message_at"] == system.json()["created_at"]

    async def test_cursor_pagination_both_directions(self, client: httpx.AsyncClient, alice: Member) -> None:
        sid = (await create_session(client, alice))["id"]
        contents = [f"m{i}" for i in range(7)]
        for content in contents:
            await send(client, alice, sid, content)
        url = f"/api/v1/sessions/{sid}/messages"

        forward: list[str] = []
        params: dict[str, Any] = {"limit": 3}
        while True:
            page = (await client.get(url, params=params, headers=alice.headers)).json()
            forward += [m["content"] for m in page["items"]]
            if not page["has_more"]:
                break
            params = {"limit": 3, "after": page["next_cursor"]}
        assert forward == contents

        backward: list[str] = []
        params = {"limit": 3, "latest": True}
        while True:
            page = (await client.get(url, params=params, headers=alice.headers)).json()
            backward = [m["content"] for m in page["items"]] + backward
            if not page["has_more"]:
                break
            params = {"limit": 3, "before": page["prev_cursor"]}
        assert backward == contents
        assert_problem(await client.get(url, params={"after": "x", "before": "y"}, headers=alice.headers), 400)
        assert_problem(await client.get(url, params={"limit": 0}, headers=alice.headers), 422)
        assert_problem(await client.get(url, params={"limit": 201}, headers=alice.headers), 422)


async def replied(client: httpx.AsyncClient, headers: dict[str, str], sid: str) -> None:
    """Until the session's newest message is a finished reply."""
    async with asyncio.timeout(15):
        while True:
            history = (await client.get(f"/api/chat/message?sessionId={sid}", headers=headers)).json()
            if history[-1]["role"] == "assistant" and history[-1]["reply_state"] == "complete":
                return
            await asyncio.sleep(0.05)


class TestSeedEndpoints:
    async def test_exactly_as_written(self, client: httpx.AsyncClient, alice: Member) -> None:
        h = alice.headers
        created = await client.post("/api/chat/session", json={"title": "Suporte"}, headers=h)
        assert created.status_code == 201
        sid = created.json()["id"]
        assert created.json()["assistant_id"] is not None  # the tenant's default assistant answers
        untitled = await client.post("/api/chat/session", headers=h)
        assert untitled.status_code == 201
        assert untitled.json()["title"] is None
        plain = await client.post("/api/chat/session", json={"assistant_id": None}, headers=h)
        assert plain.json()["assistant_id"] is None

        for question in ("Oi", "Tudo bem?"):
            sent = await client.post("/api/chat/message", json={"sessionId": sid, "message": question}, headers=h)
            assert sent.status_code == 201
            assert sent.json()["content"] == question
            await replied(client, h, sid)
        history = (await client.get(f"/api/chat/message?sessionId={sid}", headers=h)).json()
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert [history[0]["content"], history[2]["content"]] == ["Oi", "Tudo bem?"]
        assert "Tudo bem?" in history[3]["content"]  # the demo assistant answers what it was asked
        await client.post(
            "/api/chat/message", json={"sessionId": plain.json()["id"], "message": "só anotando"}, headers=h
        )
        (only,) = (await client.get(f"/api/chat/message?sessionId={plain.json()['id']}", headers=h)).json()
        assert only["content"] == "só anotando"

        active = (await client.get("/api/chat/session", headers=h)).json()
        assert [s["id"] for s in active] == [plain.json()["id"], sid, untitled.json()["id"]]

        deleted = await client.delete(f"/api/chat/session?id={sid}", headers=h)
        assert deleted.json() == {"success": True}
        remaining = [s["id"] for s in (await client.get("/api/chat/session", headers=h)).json()]
        assert remaining == [plain.json()["id"], untitled.json()["id"]]
        assert_problem(await client.delete(f"/api/chat/session?id={sid}", headers=h), 404)
        assert_problem(await client.delete("/api/chat/session", headers=h), 422)
        assert_problem(await client.delete("/api/chat/session?id=123", headers=h), 422)
        assert_problem(await client.post("/api/chat/message", json={"sessionId": sid}, headers=h), 422)
        assert_problem(await client.post("/api/chat/message", json={"sessionId": "x", "message": "a"}, headers=h), 422)
        assert_problem(await client.get("/api/chat/message", headers=h), 422)


class TestBackOffice:
    async def test_api_key_opens_chat_by_id_and_email(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant = await make_tenant()
        bob = await tenant.member(Role.member)
        key = await tenant.api_key()
        by_id = await client.post(
            "/api/v1/chats", json={"user": {"id": bob.user_id}, "title": "Bem-vindo"}, headers=key.headers
        )
        assert by_id.status_code == 201, by_id.text
        assert by_id.json()["user_id"] == bob.user_id
        assert by_id.json()["channel"] == "web"
        by_email = await client.post(
            "/api/v1/chats", json={"user": {"email": bob.email.upper()}, "title": "Segundo"}, headers=key.headers
        )
        assert by_email.status_code == 201
        listed = (await client.get("/api/v1/sessions", headers=bob.headers)).json()["items"]
        assert {s["title"] for s in listed} == {"Bem-vindo", "Segundo"}

        unknown = await client.post(
            "/api/v1/chats", json={"user": {"email": "nobody@example.com"}}, headers=key.headers
        )
        assert "nobody@example.com" in assert_problem(unknown, 404)["detail"]
        assert_problem(
            await client.post("/api/v1/chats", json={"user": {"id": "user_missing"}}, headers=key.headers), 404
        )
        assert_problem(await client.post("/api/v1/chats", json={"user": {}}, headers=key.headers), 422)
        assert_problem(
            await client.post(
                "/api/v1/chats", json={"user": {"id": bob.user_id, "email": bob.email}}, headers=key.headers
            ),
            422,
        )
        assert_problem(await client.post("/api/v1/chats", json={"user": {"id": bob.user_id}}, headers=bob.headers), 403)

        invited = await client.post(
            "/api/v1/chats",
            json={"user": {"email": "new.person@example.com"}, "create_user": True},
            headers=key.headers,
        )
        assert invited.status_code == 201, invited.text
        again = await client.post(
            "/api/v1/chats", json={"user": {"email": "new.person@example.com"}}, headers=key.headers
        )
        assert again.status_code == 201
        assert again.json()["user_id"] == invited.json()["user_id"]

        # The key still acts as the service, not as the last user it opened a chat for.
        assert_problem(await client.get("/api/v1/sessions", headers=key.headers), 403)


class TestSearchAndExport:
    async def test_search_is_accent_insensitive_ranked_and_highlighted(
        self, client: httpx.AsyncClient, alice: Member
    ) -> None:
        sid = (await create_session(client, alice, "Projeto"))["id"]
        await send(client, alice, sid, "A integração com o ERP ficou pronta")
        await send(client, alice, sid, "Integração, integração e mais INTEGRAÇÃO")
        await send(client, alice, sid, "nada a ver")
        hits = (await client.get("/api/v1/search", params={"q": "integracao"}, headers=alice.headers)).json()["items"]
        assert len(hits) == 2
        assert hits[0]["snippet"].startswith("Integração, integração")  # more occurrences rank first
        assert hits[0]["rank"] >= hits[1]["rank"]
        start, end = hits[1]["highlights"][0]
        assert hits[1]["snippet"][start:end] == "integração"
        assert hits[0]["session_title"] == "Projeto"
        assert (await client.get("/api/v1/search", params={"q": "ERP -pronta"}, headers=alice.headers)).json()[
            "items"
        ] == []
        assert_problem(await client.get("/api/v1/search", params={"q": "  "}, headers=alice.headers), 422)
        assert_problem(await client.get("/api/v1/search", params={"q": "!!!"}, headers=alice.headers), 422)
        assert_problem(await client.get("/api/v1/search", headers=alice.headers), 422)

    async def test_search_pages_without_gaps(self, client: httpx.AsyncClient, alice: Member) -> None:
        sid = (await create_session(client, alice))["id"]
        sent = set()
        for i in range(9):
            sent.add((await send(client, alice, sid, "palavra " * (i % 3 + 1) + f"n{i}"))["id"])
        seen: list[str] = []
        params: dict[str, Any] = {"q": "palavra", "limit": 4}
        while True:
            page = (await client.get("/api/v1/search", params=params, headers=alice.headers)).json()
            seen += [h["message_id"] for h in page["items"]]
            if page["next_cursor"] is None:
                break
            params = {**params, "cursor": page["next_cursor"]}
        assert len(seen) == len(set(seen)) == 9
        assert set(seen) == sent

    async def test_search_walks_windows_of_candidates(
        self, client: httpx.AsyncClient, alice: Member, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("papo.chat.search.WINDOW", 3)
        sid = (await create_session(client, alice))["id"]
        sent = [(await send(client, alice, sid, f"janela {'janela ' * (i % 2)}n{i}"))["id"] for i in range(8)]
        seen: list[str] = []
        params: dict[str, Any] = {"q": "janela", "limit": 2}
        pages = 0
        while True:
            page = (await client.get("/api/v1/search", params=params, headers=alice.headers)).json()
            seen += [h["message_id"] for h in page["items"]]
            pages += 1
            if page["next_cursor"] is None:
                break
            params = {**params, "cursor": page["next_cursor"]}
        assert sorted(seen) == sorted(sent)
        assert len(seen) == len(set(seen))
        assert pages >= 4
        # Newest window first: the first three hits are the three newest messages, ranked among themselves.
        assert set(seen[:3]) == set(sent[-3:])

    async def test_export_formats(self, client: httpx.AsyncClient, alice: Member) -> None:
        s1 = (await create_session(client, alice, "Primeira"))["id"]
        s2 = (await create_session(client, alice, "Segunda"))["id"]
        await send(client, alice, s1, 'linha com "aspas", vírgula\ne quebra')
        await send(client, alice, s2, "# título no conteúdo")
        one = await client.get(f"/api/v1/sessions/{s1}/export?format=json", headers=alice.headers)
        assert one.status_code == 200
        assert "attachment" in one.headers["content-disposition"]
        document = one.json()
        assert [s["id"] for s in document["sessions"]] == [s1]
        assert document["sessions"][0]["messages"][0]["content"] == 'linha com "aspas", vírgula\ne quebra'

        every = json.loads((await client.get("/api/v1/export", headers=alice.headers)).text)
        assert [s["title"] for s in every["sessions"]] == ["Primeira", "Segunda"]

        rows = list(
            csv.reader(io.StringIO((await client.get("/api/v1/export?format=csv", headers=alice.headers)).text))
        )
        assert rows[0][:3] == ["session_id", "session_title", "message_id"]
        assert rows[1][6] == 'linha com "aspas", vírgula\ne quebra'
        assert len(rows) == 3

        markdown = (await client.get(f"/api/v1/sessions/{s2}/export?format=markdown", headers=alice.headers)).text
        assert markdown.startswith("# Segunda")
        assert "# título no conteúdo" in markdown
        assert_problem(await client.get("/api/v1/export?format=pdf", headers=alice.headers), 422)


class TestSupportAndRetention:
    async def test_admin_sees_who_and_when_but_not_content(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant = await make_tenant()
        admin = await tenant.member(Role.admin)
        member = await tenant.member(Role.member)
        sid = (await create_session(client, member, "private title"))["id"]
        await send(client, member, sid, "private words")
        page = (await client.get("/api/v1/admin/sessions", headers=admin.headers)).json()
        assert [s["id"] for s in page["items"]] == [sid]
        assert "title" not in page["items"][0]
        assert "metadata" not in page["items"][0]
        assert page["items"][0]["user_id"] == member.user_id
        filtered = (await client.get(f"/api/v1/admin/sessions?user_id={admin.user_id}", headers=admin.headers)).json()
        assert filtered["items"] == []
        assert_problem(await client.get("/api/v1/admin/sessions", headers=member.headers), 403)
        assert_problem(await client.get(f"/api/v1/sessions/{sid}", headers=admin.headers), 404)
        assert_problem(await client.get(f"/api/v1/sessions/{sid}/messages", headers=admin.headers), 404)

    async def test_purge_removes_only_expired_soft_deleted_sessions(
        self, client: httpx.AsyncClient, alice: Member, db: Database
    ) -> None:
        kept = (await create_session(client, alice, "kept"))["id"]
        gone = (await create_session(client, alice, "gone"))["id"]
        await send(client, alice, gone, "bye")
        await client.delete(f"/api/v1/sessions/{gone}", headers=alice.headers)
        async with db.transaction() as session:
            assert await purge_deleted_sessions(session, 30) == 0  # deleted just now: within retention
        async with db.transaction() as session:
            assert await purge_deleted_sessions(session, 0) >= 1
        assert (await client.get(f"/api/v1/sessions/{kept}", headers=alice.headers)).status_code == 200
        assert_problem(await client.delete(f"/api/v1/sessions/{gone}?purge=true", headers=alice.headers), 404)
