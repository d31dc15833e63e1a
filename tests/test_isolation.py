"""Adversarial isolation matrix: A and B share tenant T1, C and an API key live in T2.

Every actor tries every verb on every other actor's session and message, over HTTP; all must be
404 and change nothing. The same attempts are then made in plain SQL as the runtime role."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from papo.auth.models import Role
from tests.support import ApiKeyHandle, Member, create_session, send


@pytest.fixture
async def world(make_tenant: Any, client: httpx.AsyncClient) -> dict[str, Any]:
    t1 = await make_tenant("T1")
    t2 = await make_tenant("T2")
    a = await t1.member(Role.member)
    b = await t1.member(Role.member)
    c = await t2.member(Role.member)
    key2 = await t2.api_key()
    data = {}
    for name, who in (("a", a), ("b", b), ("c", c)):
        session = await create_session(client, who, f"secret plans of {name}")
        message = await send(client, who, session["id"], f"zanzibar{name} confidential integração {name}")
        data[name] = {"member": who, "session": session, "message": message}
    return {"a": a, "b": b, "c": c, "key2": key2, "data": data}


def _attempts(session_id: str, message_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"/api/v1/sessions/{session_id}"
    return [
        ("GET", base, None),
        ("PATCH", base, {"title": "pwned", "metadata": {"x": 1}}),
        ("POST", f"{base}/archive", None),
        ("POST", f"{base}/unarchive", None),
        ("DELETE", base, None),
        ("DELETE", f"{base}?purge=true", None),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"content": "injected"}),
        ("GET", f"{base}/messages/{message_id}", None),
        ("PATCH", f"{base}/messages/{message_id}", {"status": "error"}),
        ("GET", f"{base}/export?format=json", None),
        ("GET", f"/api/chat/message?sessionId={session_id}", None),
        ("POST", "/api/chat/message", {"sessionId": session_id, "message": "injected"}),
        ("DELETE", f"/api/chat/session?id={session_id}", None),
    ]


async def test_http_matrix_every_verb_is_404(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    actors: list[tuple[str, Member | ApiKeyHandle]] = [("a", world["a"]), ("b", world["b"]), ("c", world["c"])]
    tried = 0
    for actor_name, actor in actors:
        for victim_name, victim in world["data"].items():
            if victim_name == actor_name:
                continue
            for method, url, body in _attempts(victim["session"]["id"], victim["message"]["id"]):
                response = await client.request(method, url, json=body, headers=actor.headers)
                assert response.status_code == 404, (actor_name, victim_name, method, url, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                tried += 1
    # An API key of T2 acts for nobody in T1: user-scoped endpoints refuse it, and nothing leaks.
    for victim in world["data"].values():
        for method, url, body in _attempts(victim["session"]["id"], victim["message"]["id"]):
            response = await client.request(method, url, json=body, headers=world["key2"].headers)
            assert response.status_code in (403, 404), (method, url, response.text)
            tried += 1
    assert tried > 90

    # Nothing changed: each owner still sees exactly their own intact session and message.
    for name, victim in world["data"].items():
        owner = victim["member"]
        session = (await client.get(f"/api/v1/sessions/{victim['session']['id']}", headers=owner.headers)).json()
        assert session["title"] == f"secret plans of {name}"
        assert session["status"] == "active"
        assert session["metadata"] == {}
        page = (await client.get(f"/api/v1/sessions/{session['id']}/messages", headers=owner.headers)).json()
        assert [m["content"] for m in page["items"]] == [victim["message"]["content"]]
        assert page["items"][0]["status"] == "sent"


async def test_listing_search_and_export_show_only_own_data(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    for name in ("a", "b", "c"):
        who = world[name]
        sessions = (await client.get("/api/v1/sessions", headers=who.headers)).json()["items"]
        assert [s["id"] for s in sessions] == [world["data"][name]["session"]["id"]]
        legacy = (await client.get("/api/chat/session", headers=who.headers)).json()
        assert [s["id"] for s in legacy] == [world["data"][name]["session"]["id"]]
        for other in ("a", "b", "c"):
            hits = (await client.get(f"/api/v1/search?q=zanzibar{other}", headers=who.headers)).json()["items"]
            assert len(hits) == (1 if other == name else 0), (name, other, hits)
        hits = (await client.get("/api/v1/search?q=confidential", headers=who.headers)).json()["items"]
        assert {h["message_id"] for h in hits} == {world["data"][name]["message"]["id"]}
        exported = (await client.get("/api/v1/export?format=json", headers=who.headers)).json()
        assert [s["id"] for s in exported["sessions"]] == [world["data"][name]["session"]["id"]]


async def test_api_key_cannot_open_chats_for_another_tenants_user(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    a = world["a"]
    for ref in ({"id": a.user_id}, {"email": a.email}):
        response = await client.post("/api/v1/chats", json={"user": ref, "title": "x"}, headers=world["key2"].headers)
        assert response.status_code == 404, response.text
    listed = (await client.get("/api/v1/sessions", headers=a.headers)).json()["items"]
    assert len(listed) == 1


class TestSqlAsRuntimeRole:
    """The same attacks in SQL: RLS must hold even if the application forgot a filter."""

    async def test_no_context_sees_nothing(self, app_role_connection: asyncpg.Connection, world: Any) -> None:
        for table in ("tenants", "users", "memberships", "api_keys", "chat_sessions", "messages"):
            assert await app_role_connection.fetchval(f"SELECT count(*) FROM {table}") == 0, table

    async def test_context_of_a_sees_only_a(self, app_role_connection: asyncpg.Connection, world: Any) -> None:
        a = world["a"]
        transaction = app_role_connection.transaction()
        await transaction.start()
        try:
            await app_role_connection.execute("SELECT papo_set_context($1, $2, 'member')", a.tenant_id, a.user_id)
            sessions = await app_role_connection.fetch("SELECT id, user_id FROM chat_sessions")
            messages = await app_role_connection.fetch("SELECT id, user_id FROM messages")
            tenants = await app_role_connection.fetch("SELECT id FROM tenants")
            assert {r["user_id"] for r in sessions} == {a.user_id}
            assert {r["user_id"] for r in messages} == {a.user_id}
            assert [r["id"] for r in tenants] == [a.tenant_id]
            # Unfiltered writes touch only A's own rows.
            assert await app_role_connection.execute("UPDATE messages SET status = 'error'") == "UPDATE 1"
            assert await app_role_connection.execute("DELETE FROM chat_sessions") == "DELETE 1"
        finally:
            await transaction.rollback()

    async def test_cannot_move_rows_to_another_user_or_tenant(
        self, app_role_connection: asyncpg.Connection, world: Any
    ) -> None:
        a, c = world["a"], world["c"]
        session_a = world["data"]["a"]["session"]["id"]
        session_c = world["data"]["c"]["session"]["id"]
        async with app_role_connection.transaction():
            await app_role_connection.execute("SELECT papo_set_context($1, $2, 'member')", a.tenant_id, a.user_id)
            # Column privileges: owner and tenant columns cannot be rewritten at all.
            for statement in (
                f"UPDATE chat_sessions SET user_id = '{world['b'].user_id}' WHERE id = '{session_a}'",
                f"UPDATE chat_sessions SET tenant_id = '{c.tenant_id}' WHERE id = '{session_a}'",
                f"UPDATE messages SET session_id = '{session_c}'",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with app_role_connection.transaction():
                        await app_role_connection.execute(statement)
            # WITH CHECK: inserting a session for someone else, or into another tenant, is refused.
            for tenant, user in ((a.tenant_id, world["b"].user_id), (c.tenant_id, c.user_id)):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with app_role_connection.transaction():
                        await app_role_connection.execute(
                            "INSERT INTO chat_sessions (tenant_id, id, user_id, channel) "
                            "VALUES ($1, gen_random_uuid(), $2, 'api')",
                            tenant,
                            user,
                        )
            # A message into another tenant's session: the session is "not found".
            with pytest.raises(asyncpg.NoDataFoundError):
                async with app_role_connection.transaction():
                    await app_role_connection.execute(
                        "INSERT INTO messages (tenant_id, id, session_id, role, content, channel) "
                        "VALUES ($1, gen_random_uuid(), $2, 'user', 'x', 'api')",
                        c.tenant_id,
                        session_c,
                    )
            # C's session named under A's own tenant id is just as invisible.
            with pytest.raises(asyncpg.NoDataFoundError):
                async with app_role_connection.transaction():
                    await app_role_connection.execute(
                        "INSERT INTO messages (tenant_id, id, session_id, role, content, channel) "
                        "VALUES ($1, gen_random_uuid(), $2, 'user', 'x', 'api')",
                        a.tenant_id,
                        session_c,
                    )

    async def test_search_candidates_follow_the_context(
        self, app_role_connection: asyncpg.Connection, world: Any
    ) -> None:
        query = "SELECT candidate_id FROM papo_search_candidates(to_tsquery('simple', 'confidential'), NULL, NULL, 100)"
        assert await app_role_connection.fetch(query) == []
        for name in ("a", "b", "c"):
            who = world[name]
            async with app_role_connection.transaction():
                await app_role_connection.execute(
                    "SELECT papo_set_context($1, $2, 'admin')", who.tenant_id, who.user_id
                )
                found = {str(r["candidate_id"]) for r in await app_role_connection.fetch(query)}
            assert found == {world["data"][name]["message"]["id"]}

    async def test_admin_reads_session_rows_but_not_messages(
        self, app_role_connection: asyncpg.Connection, world: Any, make_tenant: Any
    ) -> None:
        a = world["a"]
        async with app_role_connection.transaction():
            await app_role_connection.execute("SELECT papo_set_context($1, 'someone-else', 'admin')", a.tenant_id)
            sessions = await app_role_connection.fetch("SELECT user_id FROM chat_sessions")
            assert {r["user_id"] for r in sessions} == {a.user_id, world["b"].user_id}
            assert await app_role_connection.fetchval("SELECT count(*) FROM messages") == 0
            assert await app_role_connection.execute("UPDATE chat_sessions SET title = 'x'") == "UPDATE 0"
            assert await app_role_connection.execute("DELETE FROM chat_sessions") == "DELETE 0"

    async def test_identity_tables_are_closed(self, app_role_connection: asyncpg.Connection, world: Any) -> None:
        c = world["c"]
        async with app_role_connection.transaction():
            await app_role_connection.execute("SELECT papo_set_context($1, $2, 'member')", c.tenant_id, c.user_id)
            users = await app_role_connection.fetch("SELECT id FROM users")
            assert {r["id"] for r in users} == {c.user_id}
            assert await app_role_connection.fetchval("SELECT count(*) FROM api_keys") == 0  # not an admin
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with app_role_connection.transaction():
                    await app_role_connection.execute("INSERT INTO users (id) VALUES ('intruder')")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with app_role_connection.transaction():
                    await app_role_connection.execute("SET ROLE papo_auth")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with app_role_connection.transaction():
                    await app_role_connection.execute("SELECT papo_operator_revoke_api_key($1)", world["key2"].id)

    async def test_runtime_role_is_bound_by_rls(self, app_role_connection: asyncpg.Connection) -> None:
        role = await app_role_connection.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert not any(role.values())
        tables = await app_role_connection.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) AS owner "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"
        )
        assert len(tables) >= 6
        current = await app_role_connection.fetchval("SELECT current_user")
        for table in tables:
            assert table["relrowsecurity"] and table["relforcerowsecurity"], table["relname"]
            assert table["owner"] != current
