"""Stop the server with SIGKILL and start it again: every active session comes back without a new QR
scan, and one that cannot start fails alone."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from papo.auth.models import Role
from papo.settings import Settings
from papo.whatsapp.transports.base import InboundMessage, SessionKey
from tests.support import free_port, start_server

BASE = "/api/v1/whatsapp/sessions"
INBOX = "/api/v1/whatsapp/conversations"
REPO = str(Path(__file__).resolve().parents[2])
FAKE = {"PAPO_WHATSAPP_TRANSPORTS": "fake=tests.fake_whatsapp:FakeTransport", "PYTHONPATH": REPO}


async def statuses(http: httpx.AsyncClient, want: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Poll until every named session has the wanted status; returns them by name."""
    async with asyncio.timeout(15):
        while True:
            rows = {s["name"]: s for s in (await http.get(BASE)).json()}
            if all(rows.get(name, {}).get("status") == status for name, status in want.items()):
                return rows
            await asyncio.sleep(0.1)


async def test_sessions_come_back_after_sigkill(settings: Settings, make_tenant: Any) -> None:
    admin = await (await make_tenant("Restart")).member(Role.admin)
    port = free_port()
    server = await start_server(settings, port, **FAKE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, headers=admin.headers, timeout=10) as http:
            for name, phone in (
                ("vendas", "+5511900000001"),
                ("suporte", "+5511900000002"),
                ("financeiro", "+5511900000003"),
            ):
                created = await http.post(
                    BASE, json={"name": name, "transport": "fake", "config": {"auto_pair": phone}}
                )
                assert created.status_code == 201, created.text
            before = await statuses(http, {"vendas": "WORKING", "suporte": "WORKING", "financeiro": "WORKING"})
            # this one will not be able to start again
            patched = await http.patch(f"{BASE}/{before['financeiro']['id']}", json={"config": {"fail_start": True}})
            assert patched.status_code == 200
        server.send_signal(signal.SIGKILL)
        await server.wait()

        server = await start_server(settings, port, **FAKE)
        async with httpx.AsyncClient(base_url=url, headers=admin.headers, timeout=10) as http:
            after = await statuses(http, {"vendas": "WORKING", "suporte": "WORKING", "financeiro": "FAILED"})
            for name in ("vendas", "suporte"):
                assert after[name]["phone_number"] == before[name]["phone_number"]
                qr = (await http.get(f"{BASE}/{after[name]['id']}/qr")).json()
                assert qr["qr_code"] is None  # restored from stored credentials, no new scan
                details = (await http.get(f"{BASE}/{after[name]['id']}/details")).json()
                assert details["memory_status"] == "WORKING"
            assert "failed to start" in after["financeiro"]["status_reason"]
    finally:
        if server.returncode is None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)


async def test_one_process_runs_a_session_others_forward_and_take_over(
    app: FastAPI, settings: Settings, make_tenant: Any
) -> None:
    """Two server processes: the session runs in one (the one running fewer sessions: earlier tests
    leave some to be restored); a reply or a stop asked of the other is forwarded to it; when the
    owner dies, the other takes the session over by itself."""
    admin = await (await make_tenant("Owners")).member(Role.admin)
    extra = {**FAKE, "PAPO_WHATSAPP_HEARTBEAT_SECONDS": "1"}
    port_a, port_b = free_port(), free_port()
    server_a = await start_server(settings, port_a, **extra)
    server_b = await start_server(settings, port_b, **extra)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}", headers=admin.headers, timeout=10) as via_a,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}", headers=admin.headers, timeout=10) as via_b,
        ):
            created = await via_a.post(
                BASE, json={"name": "unico", "transport": "fake", "config": {"auto_pair": "+551100"}}
            )
            sid = created.json()["id"]
            await statuses(via_a, {"unico": "WORKING"})
            details_a = (await via_a.get(f"{BASE}/{sid}/details")).json()
            details_b = (await via_b.get(f"{BASE}/{sid}/details")).json()
            memory = (details_a["memory_status"], details_b["memory_status"])
            assert memory in {("WORKING", None), (None, "WORKING")}, memory
            runner, forwarder = (via_a, via_b) if memory[0] == "WORKING" else (via_b, via_a)

            # A reply through the process that does not run the number is sent by the one that does.
            key = SessionKey(admin.tenant_id, uuid.UUID(sid))
            await app.state.papo.whatsapp.receive(key, InboundMessage("wamid.in-fwd", "5511977770000", "Bia", "oi"))
            conversation = (await forwarder.get(INBOX)).json()[0]["id"]
            reply = await forwarder.post(f"{INBOX}/{conversation}/messages", json={"content": "Olá, Bia!"})
            assert reply.status_code == 201, reply.text
            async with asyncio.timeout(10):
                while True:
                    messages = (await forwarder.get(f"{INBOX}/{conversation}/messages")).json()
                    sent = next(m for m in messages if m["id"] == reply.json()["id"])
                    if sent["delivery_status"] != "pending":
                        break
                    await asyncio.sleep(0.05)
            assert sent["delivery_status"] == "sent" and sent["external_id"].startswith("wamid.fake-")

            # asked of the process that does not run it, the stop happens where it runs
            assert (await forwarder.post(f"{BASE}/{sid}/stop")).status_code == 202
            await statuses(runner, {"unico": "STOPPED"})
            assert (await runner.get(f"{BASE}/{sid}/details")).json()["memory_status"] is None
            assert (await forwarder.post(f"{BASE}/{sid}/restart")).status_code == 202
            await statuses(forwarder, {"unico": "WORKING"})

            owner, other = (via_a, via_b)
            if (await via_b.get(f"{BASE}/{sid}/details")).json()["memory_status"] == "WORKING":
                owner, other = via_b, via_a
            dying = server_a if owner is via_a else server_b
            dying.send_signal(signal.SIGKILL)
            await dying.wait()
            async with asyncio.timeout(15):  # the survivor's heartbeat adopts the orphan
                while True:
                    if (await other.get(f"{BASE}/{sid}/details")).json()["memory_status"] == "WORKING":
                        break
                    await asyncio.sleep(0.2)
    finally:
        for server in (server_a, server_b):
            if server.returncode is None:
                server.terminate()
                await asyncio.wait_for(server.wait(), 10)
