"""Assistants and streamed replies through the real openai SDK against a fake provider over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from papo import netguard
from papo.assistants.replies import TITLES_AT_ONCE, fallback_title
from papo.auth.models import Role
from papo.client import GrowingReply, RealtimeClient, RealtimeEvent
from papo.db.engine import Database
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.support import Member, StaticResolver


@pytest.fixture
async def team(make_tenant: Any) -> tuple[Member, Member]:
    tenant = await make_tenant("AI")
    return await tenant.member(Role.admin), await tenant.member(Role.member)


async def make_assistant(client: httpx.AsyncClient, admin: Member, base_url: str, model: str, **extra: Any) -> str:
    body = {"name": f"Bot {model}", "model": model, "base_url": base_url, "api_key": API_KEY, **extra}
    response = await client.post("/api/v1/assistants", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def ai_chat(client: httpx.AsyncClient, who: Member, assistant_id: str, title: str | None = "ai") -> str:
    """A chat with the assistant (with title None, one its first exchange names)."""
    response = await client.post(
        "/api/v1/sessions", json={"title": title, "assistant_id": assistant_id}, headers=who.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["assistant_id"] == assistant_id
    return str(response.json()["id"])


async def ask(client: httpx.AsyncClient, who: Member, sid: str, text: str) -> str:
    response = await client.post(f"/api/v1/sessions/{sid}/messages", json={"content": text}, headers=who.headers)
    assert response.status_code == 201, response.text
    return response.headers["x-reply-id"]


async def poll(client: httpx.AsyncClient, who: Member, url: str, ready: Any, seconds: float) -> dict[str, Any]:
    """GET `url` until `ready(body)` holds; returns that body."""
    async with asyncio.timeout(seconds):
        while True:
            body: dict[str, Any] = (await client.get(url, headers=who.headers)).json()
            if ready(body):
                return body
            await asyncio.sleep(0.05)


async def settled(client: httpx.AsyncClient, who: Member, sid: str, reply_id: str) -> dict[str, Any]:
    """Wait until the reply leaves `streaming`; returns it."""
    url = f"/api/v1/sessions/{sid}/messages/{reply_id}"
    return await poll(client, who, url, lambda m: m["reply_state"] != "streaming", 15)


async def written(client: httpx.AsyncClient, who: Member, sid: str, reply_id: str) -> None:
    """Wait until the reply has some saved text (it is being streamed)."""
    await poll(client, who, f"/api/v1/sessions/{sid}/messages/{reply_id}", lambda m: bool(m["content"]), 10)


class TestAssistants:
    async def test_admins_manage_members_use_keys_stay_secret(
        self,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        admin, member = team
        _, base_url = fake_openai
        assistant_id = await make_assistant(client, admin, base_url, "fake-echo", instructions="Be kind.")
        listed = (await client.get("/api/v1/assistants", headers=member.headers)).json()
        assert [a["id"] for a in listed] == [assistant_id]
        assert listed[0]["has_api_key"] is True
        assert API_KEY not in str(listed)
        assert (
            await client.post("/api/v1/assistants", json={"name": "x", "model": "m"}, headers=member.headers)
        ).status_code == 403
        patched = await client.patch(f"/api/v1/assistants/{assistant_id}", json={"api_key": ""}, headers=admin.headers)
        assert patched.json()["has_api_key"] is False
        bad = await client.post(
            "/api/v1/assistants",
            json={"name": "x", "model": "m", "parameters": {"temperature": 9}, "api_key_env": "lower case"},
            headers=admin.headers,
        )
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"body.parameters.temperature", "body.api_key_env"}
        outsider = await (await make_tenant()).member(Role.admin)
        assert (await client.get(f"/api/v1/assistants/{assistant_id}", headers=outsider.headers)).status_code == 404
        chat = await client.post("/api/v1/sessions", json={"assistant_id": assistant_id}, headers=outsider.headers)
        assert chat.status_code == 404

    async def test_admins_cannot_reach_into_the_server(
        self,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A tenant admin may not point an assistant at internal hosts, nor borrow the server's secrets."""
        admin, _ = team
        monkeypatch.setattr(netguard, "default_resolver", StaticResolver({"acme.openai.azure.com": ["20.0.0.1"]}))
        monkeypatch.setattr(settings, "assistant_allowed_hosts", ["api.openai.com", "*.openai.azure.com"])
        monkeypatch.setattr(settings, "assistant_key_envs", ["SHARED_PROVIDER_KEY"])
        before = (await client.get("/api/v1/assistants", headers=admin.headers)).json()
        for body, field in (
            ({"base_url": "http://169.254.169.254/latest/"}, "base_url"),
            ({"base_url": "https://evil.example/v1"}, "base_url"),
            ({"api_key_env": "PAPO_SECRET_KEY"}, "api_key_env"),
        ):
            refused = await client.post(
                "/api/v1/assistants", json={"name": "x", "model": "m", **body}, headers=admin.headers
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["field"] == field
        for body in (
            {"base_url": "https://api.openai.com/v1", "api_key_env": "SHARED_PROVIDER_KEY"},
            {"base_url": "https://acme.openai.azure.com/openai/v1"},
        ):
            created = await client.post(
                "/api/v1/assistants", json={"name": "ok", "model": "m", **body}, headers=admin.headers
            )
            assert created.status_code == 201, created.text
            patched = await client.patch(
                f"/api/v1/assistants/{created.json()['id']}",
                json={"base_url": "http://10.0.0.5:8080/v1"},
                headers=admin.headers,
            )
            assert patched.status_code == 422
        after = (await client.get("/api/v1/assistants", headers=admin.headers)).json()
        assert len(after) == len(before) + 2
        assert {a["base_url"] for a in after} >= {
            "https://api.openai.com/v1",
            "https://acme.openai.azure.com/openai/v1",
        }


class TestReplies:
    async def test_streamed_reply_with_usage_and_realtime_deltas(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str], live_url: str
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        assistant_id = await make_assistant(client, admin, base_url, "fake-echo", instructions="Answer briefly.")
        sid = await ai_chat(client, member, assistant_id)
        realtime = RealtimeClient(live_url, member.token)
        stream = realtime.events()
        first = asyncio.create_task(anext(stream))
        await asyncio.wait_for(realtime.connected.wait(), 5)
        reply_id = await ask(client, member, sid, "quanto custa o plano anual")
        reply = await settled(client, member, sid, reply_id)
        assert reply["content"] == "Echo: quanto custa o plano anual"
        assert reply["status"] == "delivered"
        assert reply["reply_state"] == "complete"
        meta = reply["metadata"]
        assert meta["model"] == "fake-echo"
        assert meta["usage"] == {"prompt_tokens": 11, "completion_tokens": 6}
        assert meta["finish_reason"] == "stop"
        assert meta["time_to_first_token_ms"] <= meta["total_ms"]
        sent = fake.requests[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "Answer briefly."}
        assert sent[-1] == {"role": "user", "content": "quanto custa o plano anual"}

        events = [await asyncio.wait_for(first, 5)]
        async with asyncio.timeout(5):
            while not (events[-1].event == "message.updated" and events[-1].data["id"] == reply_id):
                events.append(await anext(stream))
        await stream.aclose()
        assert all(isinstance(e, RealtimeEvent) for e in events)
        deltas = [e for e in events if e.event == "reply.delta"]
        assert deltas and all(e.id is None for e in deltas)  # live-only: not kept in the outbox
        assert "".join(e.data["delta"] for e in deltas) == reply["content"]
        assert events[-1].data["content"] == reply["content"]
        types = [e.event for e in events]
        assert types.index("message.created") < types.index("message.updated")

    @pytest.mark.parametrize(
        ("model", "state", "reason"),
        [
            ("fake-429-once", "complete", None),
            ("fake-500", "failed", "(500)"),
            ("fake-401", "failed", "rejected the API key"),
            ("fake-unknown", "failed", "does not know model"),
            ("fake-malformed", "failed", "malformed"),
            ("fake-early-close", "failed", "closed the stream early"),
            ("fake-empty", "failed", "empty answer"),
        ],
    )
    async def test_provider_failures_leave_a_clear_state(
        self,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        fake_openai: tuple[FakeOpenAI, str],
        model: str,
        state: str,
        reason: str | None,
    ) -> None:
        admin, member = team
        _, base_url = fake_openai
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, model))
        reply_id = await ask(client, member, sid, "olá")
        reply = await settled(client, member, sid, reply_id)
        assert reply["reply_state"] == state
        if reason is None:
            assert reply["status"] == "delivered"
        else:
            assert reply["status"] == "error"
            assert reason in reply["metadata"]["error"]
        history = (await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
        assert history[0]["content"] == "olá"  # the user's message is never lost
        assert history[0]["status"] == "sent"

    async def test_stop_keeps_what_was_written_and_busy_chat_refuses_new_messages(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        _, base_url = fake_openai
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, "fake-slow"))
        reply_id = await ask(client, member, sid, "conte uma história longa")
        busy = await client.post(f"/api/v1/sessions/{sid}/messages", json={"content": "e aí?"}, headers=member.headers)
        assert busy.status_code == 409
        await written(client, member, sid, reply_id)
        stopped = await client.post(f"/api/v1/sessions/{sid}/messages/{reply_id}/stop", headers=member.headers)
        assert stopped.status_code == 200
        assert stopped.json()["reply_state"] == "stopped"
        kept = stopped.json()["content"]
        assert kept.startswith("Echo:")
        await asyncio.sleep(0.6)  # the generator gives up, adding at most what it had already sent
        final = (await client.get(f"/api/v1/sessions/{sid}/messages/{reply_id}", headers=member.headers)).json()
        assert final["content"].startswith(kept)
        assert final["reply_state"] == "stopped"
        await asyncio.sleep(0.6)
        later = (await client.get(f"/api/v1/sessions/{sid}/messages/{reply_id}", headers=member.headers)).json()
        assert later["content"] == final["content"]  # it stopped growing
        items = (await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
        assert [m["content"] for m in items if m["role"] == "user"] == ["conte uma história longa"]
        again = await client.post(
            f"/api/v1/sessions/{sid}/messages", json={"content": "obrigado"}, headers=member.headers
        )
        assert again.status_code == 201

    async def test_a_chat_whose_first_reply_was_stopped_is_named_by_its_question(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        assistant_id = await make_assistant(client, admin, fake_openai[1], "fake-slow")
        made = await client.post("/api/v1/sessions", json={"assistant_id": assistant_id}, headers=member.headers)
        sid = made.json()["id"]
        assert made.json()["title"] is None
        reply_id = await ask(client, member, sid, "planeje uma viagem de uma semana ao Chile")
        await written(client, member, sid, reply_id)
        await client.post(f"/api/v1/sessions/{sid}/messages/{reply_id}/stop", headers=member.headers)
        named = await poll(client, member, f"/api/v1/sessions/{sid}", lambda chat: chat["title"] is not None, 5)
        assert named["title"] == "planeje uma viagem de uma semana…"

    async def test_history_fits_the_token_budget(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        sid = await ai_chat(
            client, member, await make_assistant(client, admin, base_url, "fake-echo", context_token_budget=300)
        )
        for index in range(4):
            reply_id = await ask(client, member, sid, f"pergunta {index} " + "palavra " * 60)
            await settled(client, member, sid, reply_id)
        sent = fake.requests[-1]["messages"]
        total = sum(len(m["content"]) // 4 + 4 for m in sent)
        assert total <= 300
        assert sent[-1]["content"].startswith("pergunta 3")
        assert not any(m["content"].startswith("pergunta 0") for m in sent)  # oldest dropped first

    async def test_default_assistant_is_the_labelled_demo(
        self, client: httpx.AsyncClient, team: tuple[Member, Member]
    ) -> None:
        _, member = team
        created = await client.post("/api/v1/sessions", json={"assistant_id": "default"}, headers=member.headers)
        sid = created.json()["id"]
        reply = await settled(client, member, sid, await ask(client, member, sid, "Oi, tudo bem?"))
        assert reply["reply_state"] == "complete"
        assert "demo assistant" in reply["content"]
        assert "Oi, tudo bem?" in reply["content"]
        assistants = (await client.get("/api/v1/assistants", headers=member.headers)).json()
        assert [(a["provider"], a["is_default"]) for a in assistants] == [("demo", True)]

    async def test_sweep_finishes_replies_abandoned_by_a_dead_process(
        self,
        live_url: str,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        app: Any,
        database: ProvisionedDatabase,
        db: Database,
    ) -> None:
        _, member = team
        sid = (await client.post("/api/v1/sessions", json={"assistant_id": "default"}, headers=member.headers)).json()[
            "id"
        ]
        owner = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            # What a killed process leaves behind: a reply still `streaming`, untouched for minutes.
            await owner.execute("ALTER TABLE messages DISABLE TRIGGER USER")
            reply_id = await owner.fetchval(
                "INSERT INTO messages (tenant_id, id, session_id, user_id, channel, role, content, reply_state, "
                "created_at, updated_at) VALUES ($1, gen_random_uuid(), $2, $3, 'api', 'assistant', 'half an ans', "
                "'streaming', now() - interval '10 minutes', now() - interval '10 minutes') RETURNING id",
                member.tenant_id,
                uuid.UUID(sid),
                member.user_id,
            )
            await owner.execute("ALTER TABLE messages ENABLE TRIGGER USER")
        finally:
            await owner.close()
        realtime = RealtimeClient(live_url, member.token)
        stream = realtime.events()
        announced = asyncio.create_task(anext(stream))
        await asyncio.wait_for(realtime.connected.wait(), 5)
        # The server's own periodic sweep may get there first; either way the outcome is the same.
        await app.state.papo.replies.sweep()
        event = await asyncio.wait_for(announced, 5)
        await stream.aclose()
        assert isinstance(event, RealtimeEvent)
        assert (event.event, event.data["id"], event.data["reply_state"]) == (
            "message.updated",
            str(reply_id),
            "interrupted",
        )
        reply = (await client.get(f"/api/v1/sessions/{sid}/messages/{reply_id}", headers=member.headers)).json()
        assert reply["reply_state"] == "interrupted"
        assert reply["status"] == "error"
        assert reply["content"] == "half an ans"
        assert "interrupted" in reply["metadata"]["error"]


class TestBranches:
    async def test_regenerate_keeps_the_old_reply_and_retries_failures(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        assistant_id = await make_assistant(client, admin, base_url, "fake-500")
        sid = await ai_chat(client, member, assistant_id)
        failed = await settled(client, member, sid, await ask(client, member, sid, "resuma o contrato"))
        assert failed["reply_state"] == "failed"
        await client.patch(f"/api/v1/assistants/{assistant_id}", json={"model": "fake-echo"}, headers=admin.headers)

        retried = await client.post(f"/api/v1/sessions/{sid}/regenerate", headers=member.headers)
        assert retried.status_code == 202, retried.text
        assert retried.json()["branch_of"] == failed["id"]
        second = await settled(client, member, sid, retried.json()["id"])
        assert second["content"] == "Echo: resuma o contrato"

        third_id = (await client.post(f"/api/v1/sessions/{sid}/regenerate", headers=member.headers)).json()["id"]
        await settled(client, member, sid, third_id)
        # The model saw the question once, and none of the replaced replies.
        assert [m["content"] for m in fake.requests[-1]["messages"]] == ["resuma o contrato"]

        url = f"/api/v1/sessions/{sid}/messages"
        current = (await client.get(url, headers=member.headers)).json()["items"]
        assert [m["id"] for m in current if m["role"] == "assistant"] == [third_id]
        everything = (await client.get(url, params={"include_superseded": True}, headers=member.headers)).json()[
            "items"
        ]
        replies = [m for m in everything if m["role"] == "assistant"]
        assert [m["id"] for m in replies] == [failed["id"], second["id"], third_id]
        assert replies[0]["superseded_at"] is not None
        assert replies[1]["superseded_at"] is not None

    async def test_edit_and_resend_branches_from_the_edited_message(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, "fake-echo"))
        await settled(client, member, sid, await ask(client, member, sid, "primeira pergunta"))
        await settled(client, member, sid, await ask(client, member, sid, "segunda pergunta"))
        items = (await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
        first_question = items[0]

        edited = await client.post(
            f"/api/v1/sessions/{sid}/messages/{first_question['id']}/edit",
            json={"content": "pergunta corrigida"},
            headers=member.headers,
        )
        assert edited.status_code == 201, edited.text
        assert edited.json()["branch_of"] == first_question["id"]
        await settled(client, member, sid, edited.headers["x-reply-id"])
        assert [m["content"] for m in fake.requests[-1]["messages"]] == ["pergunta corrigida"]

        current = (await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
        assert [m["content"] for m in current] == ["pergunta corrigida", "Echo: pergunta corrigida"]
        old_branch = (
            await client.get(f"/api/v1/sessions/{sid}/messages?include_superseded=true", headers=member.headers)
        ).json()["items"]
        assert [m["content"] for m in old_branch if m["superseded_at"]] == [
            "primeira pergunta",
            "Echo: primeira pergunta",
            "segunda pergunta",
            "Echo: segunda pergunta",
        ]
        reply_id = current[1]["id"]
        not_mine = await client.post(
            f"/api/v1/sessions/{sid}/messages/{reply_id}/edit", json={"content": "x"}, headers=member.headers
        )
        assert not_mine.status_code == 409
        old = await client.post(
            f"/api/v1/sessions/{sid}/messages/{first_question['id']}/edit",
            json={"content": "x"},
            headers=member.headers,
        )
        assert old.status_code == 409


class TestTitles:
    async def titled(self, client: httpx.AsyncClient, who: Member, sid: str) -> str:
        return str((await poll(client, who, f"/api/v1/sessions/{sid}", lambda s: bool(s["title"]), 10))["title"])

    async def test_first_exchange_names_the_chat(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        assistant_id = await make_assistant(client, admin, base_url, "fake-echo")
        sid = await ai_chat(client, member, assistant_id, title=None)
        await settled(client, member, sid, await ask(client, member, sid, "como exporto meus dados"))
        title = await self.titled(client, member, sid)
        # The fake provider echoes the titling prompt: proof the model was asked, and the answer used.
        assert title.startswith("Echo: User: como exporto meus dados")
        assert len(title) <= 80
        assert fake.requests[-1]["messages"][0]["content"].startswith("Write a short title")

        # A title the user set is never overwritten, and later exchanges do not rename.
        await client.patch(f"/api/v1/sessions/{sid}", json={"title": "Exportação"}, headers=member.headers)
        await settled(client, member, sid, await ask(client, member, sid, "e em CSV?"))
        assert (await client.get(f"/api/v1/sessions/{sid}", headers=member.headers)).json()["title"] == "Exportação"

    async def test_a_burst_of_first_replies_names_its_chats_a_few_at_a_time(
        self, client: httpx.AsyncClient, team: tuple[Member, Member], fake_openai: tuple[FakeOpenAI, str]
    ) -> None:
        admin, member = team
        fake, base_url = fake_openai
        assistant_id = await make_assistant(client, admin, base_url, "fake-echo")
        chats = [await ai_chat(client, member, assistant_id, title=None) for _ in range(8)]
        fake.most_titling_at_once = 0
        questions = (ask(client, member, sid, f"pergunta número {n}") for n, sid in enumerate(chats))
        replies = await asyncio.gather(*questions)
        for sid, reply_id in zip(chats, replies, strict=True):
            await settled(client, member, sid, reply_id)
        titles = [await self.titled(client, member, sid) for sid in chats]
        assert all(title.startswith("Echo: User: pergunta número") for title in titles)
        assert 1 <= fake.most_titling_at_once <= TITLES_AT_ONCE

    async def test_demo_falls_back_to_the_first_words(
        self, client: httpx.AsyncClient, team: tuple[Member, Member]
    ) -> None:
        _, member = team
        sid = (await client.post("/api/v1/sessions", json={"assistant_id": "default"}, headers=member.headers)).json()[
            "id"
        ]
        await settled(
            client, member, sid, await ask(client, member, sid, "Preciso de ajuda com a fatura de outubro por favor")
        )
        assert await self.titled(client, member, sid) == "Preciso de ajuda com a fatura…"

    def test_fallback_title(self) -> None:
        assert fallback_title("  curto  ") == "curto"
        assert fallback_title("") == "New chat"
        assert fallback_title("um dois três quatro cinco seis sete") == "um dois três quatro cinco seis…"


class TestUsage:
    async def test_usage_report_and_daily_quota(
        self,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        make_tenant: Any,
        fake_openai: tuple[FakeOpenAI, str],
    ) -> None:
        admin, member = team
        _, base_url = fake_openai
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, "fake-echo"))
        assert (
            await client.put("/api/v1/usage/quota", json={"daily_tokens_per_user": 20}, headers=member.headers)
        ).status_code == 403
        assert (
            await client.put("/api/v1/usage/quota", json={"daily_tokens_per_user": 0}, headers=admin.headers)
        ).status_code == 422
        assert (
            await client.put("/api/v1/usage/quota", json={"daily_tokens_per_user": 10}, headers=admin.headers)
        ).status_code == 204

        await settled(client, member, sid, await ask(client, member, sid, "um dois três"))
        refused = await client.post(
            f"/api/v1/sessions/{sid}/messages", json={"content": "mais uma"}, headers=member.headers
        )
        assert refused.status_code == 429
        assert refused.json()["type"] == "urn:papo:problem:quota-exceeded"
        contents = [
            m["content"]
            for m in (await client.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
        ]
        assert "mais uma" not in contents  # refused means nothing was written

        report = (await client.get("/api/v1/usage", headers=admin.headers)).json()
        assert [(r["user_id"], r["replies"], r["prompt_tokens"], r["completion_tokens"]) for r in report] == [
            (member.user_id, 1, 11, 4)
        ]
        assert (await client.get("/api/v1/usage", headers=member.headers)).json() == report  # their own row
        assert (await client.get(f"/api/v1/usage?user_id={admin.user_id}", headers=admin.headers)).json() == []
        outsider = await (await make_tenant()).member(Role.admin)
        assert (await client.get("/api/v1/usage", headers=outsider.headers)).json() == []
        assert (
            await client.get("/api/v1/usage?from=2026-02-01&to=2026-01-01", headers=admin.headers)
        ).status_code == 400

        assert (
            await client.put("/api/v1/usage/quota", json={"daily_tokens_per_user": None}, headers=admin.headers)
        ).status_code == 204
        assert (
            await client.post(f"/api/v1/sessions/{sid}/messages", json={"content": "agora sim"}, headers=member.headers)
        ).status_code == 201


class TestReload:
    async def test_a_reload_mid_stream_sees_the_text_so_far_then_the_rest(
        self,
        client: httpx.AsyncClient,
        team: tuple[Member, Member],
        fake_openai: tuple[FakeOpenAI, str],
        live_url: str,
    ) -> None:
        admin, member = team
        _, base_url = fake_openai
        sid = await ai_chat(client, member, await make_assistant(client, admin, base_url, "fake-slow"))
        reply_id = await ask(client, member, sid, "escreva bastante")
        await written(client, member, sid, reply_id)
        # The reloaded page: subscribe first, then read what is already there.
        realtime = RealtimeClient(live_url, member.token)
        stream = realtime.events()
        first = asyncio.create_task(anext(stream))
        await asyncio.wait_for(realtime.connected.wait(), 5)
        so_far = (await client.get(f"/api/v1/sessions/{sid}/messages/{reply_id}", headers=member.headers)).json()
        assert so_far["reply_state"] == "streaming"
        reply = GrowingReply(so_far["content"])
        refetches = 0
        event = await asyncio.wait_for(first, 10)
        async with asyncio.timeout(20):
            while not (event.event == "message.updated" and event.data["id"] == reply_id):
                if event.event == "reply.delta" and event.data["id"] == reply_id:
                    reply.apply(event.data["offset"], event.data["delta"])
                    if reply.needs_refetch:  # the saved text is behind the live deltas: read it again
                        url = f"/api/v1/sessions/{sid}/messages/{reply_id}"
                        reply.rebase((await client.get(url, headers=member.headers)).json()["content"])
                        refetches += 1
                event = await anext(stream)
        await stream.aclose()
        assert event.data["reply_state"] == "complete"
        assert reply.text == event.data["content"]
        assert not reply.needs_refetch
        assert len(reply.text) > len(so_far["content"])
