"""A server process killed while writing a reply: after a restart the reply is an `interrupted`
error (not `streaming` forever), the user's message is intact, and regenerate recovers."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx

from papo.auth.models import Role
from papo.settings import Settings
from tests.assistants.test_replies import ai_chat, make_assistant, settled, written
from tests.fake_openai import FakeOpenAI
from tests.support import free_port, start_server


async def test_kill_mid_stream_then_restart_sweeps_and_regenerates(
    settings: Settings, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    tenant = await make_tenant("Crash")
    admin, member = await tenant.member(Role.admin), await tenant.member(Role.member)
    _, base_url = fake_openai
    port = free_port()
    server = await start_server(settings, port, PAPO_REPLY_STALE_SECONDS="1")
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as api:
            sid = await ai_chat(api, member, await make_assistant(api, admin, base_url, "fake-slow"))
            sent = await api.post(
                f"/api/v1/sessions/{sid}/messages", json={"content": "história"}, headers=member.headers
            )
            reply_id = sent.headers["x-reply-id"]
            await written(api, member, sid, reply_id)
        server.send_signal(signal.SIGKILL)
        await server.wait()
        await asyncio.sleep(1.2)  # older than the stale limit, as after any real restart
        server = await start_server(settings, port, PAPO_REPLY_STALE_SECONDS="1")
        async with httpx.AsyncClient(base_url=url, timeout=10) as api:
            reply = (await api.get(f"/api/v1/sessions/{sid}/messages/{reply_id}", headers=member.headers)).json()
            assert reply["reply_state"] == "interrupted"
            assert reply["status"] == "error"
            assert reply["content"].startswith("Echo:")  # what was written before the kill is kept
            history = (await api.get(f"/api/v1/sessions/{sid}/messages", headers=member.headers)).json()["items"]
            assert history[0]["content"] == "história"
            again = await api.post(f"/api/v1/sessions/{sid}/regenerate", headers=member.headers)
            assert again.status_code == 202
            recovered = await settled(api, member, sid, again.json()["id"])
            assert recovered["reply_state"] == "complete"
    finally:
        if server.returncode is None:
            server.terminate()
            await server.wait()
