"""Stop the server with SIGKILL and start it again: every active session comes back without a new QR
scan, and one that cannot start fails alone."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx

from papo.auth.models import Role
from papo.settings import Settings
from tests.realtime.test_multiprocess import free_port, start_server

BASE = "/api/v1/whatsapp/sessions"
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
