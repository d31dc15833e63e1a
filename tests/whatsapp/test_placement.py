"""Three server processes share the WhatsApp sessions (issue 16): a new session goes to the process
running the fewest, none runs more than its cap, and when one is killed the others adopt its
sessions, still within the cap."""

from __future__ import annotations

import asyncio
import signal

import httpx

from papo.auth.models import Role
from tests.conftest import Isolated
from tests.support import free_port, start_server
from tests.whatsapp.test_restore import BASE, FAKE, statuses

CAP = 3


async def runners(clients: list[httpx.AsyncClient], session_ids: list[str]) -> dict[str, int]:
    """Which process (index) runs each session, from each process's own memory."""
    where: dict[str, int] = {}
    for sid in session_ids:
        for index, http in enumerate(clients):
            if (await http.get(f"{BASE}/{sid}/details")).json()["memory_status"] == "WORKING":
                where[sid] = index
    return where


async def test_sessions_spread_over_three_processes_within_the_cap_and_are_adopted(isolated: Isolated) -> None:
    settings = isolated.settings  # a database of its own: no other test's sessions to restore
    admin = await (await isolated.tenant("Spread")).member(Role.admin)
    extra = {**FAKE, "PAPO_WHATSAPP_HEARTBEAT_SECONDS": "1", "PAPO_WHATSAPP_MAX_SESSIONS_PER_PROCESS": str(CAP)}
    ports = [free_port() for _ in range(3)]
    servers = [await start_server(settings, port, **extra) for port in ports]
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=admin.headers, timeout=10) for port in ports
    ]
    try:
        session_ids = []
        for n in range(6):  # all created through the first process
            created = await clients[0].post(
                BASE, json={"name": f"n{n}", "transport": "fake", "config": {"auto_pair": f"+55110{n}"}}
            )
            assert created.status_code == 201, created.text
            session_ids.append(created.json()["id"])
            await statuses(clients[0], {f"n{n}": "WORKING"})
        where = await runners(clients, session_ids)
        assert sorted(where) == sorted(session_ids), "every session runs somewhere, once"
        assert sorted(list(where.values()).count(i) for i in range(3)) == [2, 2, 2], where

        # The first process dies; the two others take its sessions over, one each (3 = the cap).
        victim = 0
        servers[victim].send_signal(signal.SIGKILL)
        await servers[victim].wait()
        survivors = [http for index, http in enumerate(clients) if index != victim]
        async with asyncio.timeout(20):
            while True:
                where = await runners(survivors, session_ids)
                if len(where) == len(session_ids):
                    break
                await asyncio.sleep(0.3)
        assert sorted(list(where.values()).count(i) for i in range(2)) == [3, 3], where

        # Every process left is full: a new session is refused with the reason, not squeezed in.
        created = await survivors[0].post(
            BASE, json={"name": "one-too-many", "transport": "fake", "config": {"auto_pair": "+5511099"}}
        )
        assert created.status_code == 201
        rows = await statuses(survivors[0], {"one-too-many": "FAILED"})
        assert f"maximum of {CAP} sessions" in (rows["one-too-many"]["status_reason"] or "")
    finally:
        for http in clients:
            await http.aclose()
        for server in servers:
            if server.returncode is None:
                server.terminate()
                await asyncio.wait_for(server.wait(), 10)
