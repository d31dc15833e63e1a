"""WhatsApp sessions (seed 004): the life of a session through the fake transport, company isolation,
the seed's maintenance calls, and the legacy import."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from papo.auth.models import Role
from papo.client import RealtimeClient, RealtimeEvent
from papo.db.engine import RlsContext, driver
from papo.settings import Settings
from papo.whatsapp.transports.base import SessionKey
from tests.cli.test_cli import papo
from tests.fake_whatsapp import FakeTransport
from tests.support import WHATSAPP_SESSIONS as BASE
from tests.support import Member, TenantHandle, create_whatsapp_session, wait_status


@pytest.fixture
async def company(make_tenant: Any) -> tuple[TenantHandle, Member, Member]:
    tenant = await make_tenant("Loja")
    return tenant, await tenant.member(Role.admin), await tenant.member(Role.agent)


class TestLifecycle:
    async def test_qr_scan_work_drop_logout_crash_restart(
        self,
        client: httpx.AsyncClient,
        company: tuple[TenantHandle, Member, Member],
        fake: FakeTransport,
        live_url: str,
    ) -> None:
        tenant, admin, agent = company
        realtime = RealtimeClient(live_url, agent.token)  # an agent watches the company's sessions
        stream = realtime.events()
        first = asyncio.create_task(anext(stream))
        await asyncio.wait_for(realtime.connected.wait(), 5)

        created = await create_whatsapp_session(client, admin, "vendas")
        sid = created["id"]
        key = SessionKey(tenant.id, uuid.UUID(sid))
        waiting = await wait_status(client, admin, sid, "SCAN_QR_CODE")
        assert waiting["has_qr"] is True
        qr = (await client.get(f"{BASE}/{sid}/qr", headers=admin.headers)).json()["qr_code"]
        assert qr.startswith("fake-qr-")
        svg = await client.get(f"{BASE}/{sid}/qr.svg", headers=admin.headers)
        assert svg.headers["content-type"] == "image/svg+xml"
        assert b"<svg" in svg.content
        png = await client.get(f"{BASE}/{sid}/qr.png", headers=admin.headers)
        assert png.content.startswith(b"\x89PNG")
        assert (await client.get(f"{BASE}/{sid}/qr", headers=agent.headers)).status_code == 403  # admins pair
        rotated = await fake.rotate_qr(key)
        assert (await client.get(f"{BASE}/{sid}/qr", headers=admin.headers)).json()["qr_code"] == rotated

        await fake.scan(key, "+5511999990001")
        working = await wait_status(client, admin, sid, "WORKING")
        assert working["phone_number"] == "+5511999990001"
        assert working["has_qr"] is False
        details = (await client.get(f"{BASE}/{sid}/details", headers=admin.headers)).json()
        assert details["memory_status"] == "WORKING"
        assert details["has_credentials"] is True
        assert details["seed_status_word"] == "CONNECTED"

        await fake.drop(key)  # the network blinks; it comes back by itself
        assert (await wait_status(client, admin, sid, "WORKING"))["status_reason"] is None

        await fake.crash(key)
        failed = await wait_status(client, admin, sid, "FAILED")
        assert "crashed" in failed["status_reason"]
        restarted = await client.post(f"{BASE}/{sid}/restart", headers=admin.headers)
        assert restarted.status_code == 202
        await wait_status(client, admin, sid, "WORKING")  # stored credentials: no new QR

        await fake.log_out_from_phone(key)
        stopped = await wait_status(client, admin, sid, "STOPPED")
        assert "logged out" in stopped["status_reason"]
        assert fake.has_credentials(key) is False

        seen: list[str] = []
        event = await asyncio.wait_for(first, 5)
        async with asyncio.timeout(5):
            while True:
                if isinstance(event, RealtimeEvent) and event.event == "whatsapp.session.updated":
                    assert "qr_code" not in event.data and "config" not in event.data
                    seen.append(event.data["status"])
                    if seen[-1] == "STOPPED" and "WORKING" in seen:
                        break
                event = await anext(stream)
        await stream.aclose()
        assert seen[:3] == ["STOPPED", "STARTING", "SCAN_QR_CODE"]

    async def test_a_transport_that_cannot_start_fails_its_session_only(
        self, client: httpx.AsyncClient, company: tuple[TenantHandle, Member, Member]
    ) -> None:
        _, admin, _ = company
        broken = await create_whatsapp_session(client, admin, "quebrada", config={"fail_start": True})
        fine = await create_whatsapp_session(client, admin, "ok")
        failed = await wait_status(client, admin, broken["id"], "FAILED")
        assert "failed to start" in failed["status_reason"]
        await wait_status(client, admin, fine["id"], "SCAN_QR_CODE")


class TestCompanies:
    async def test_another_company_sees_nothing_and_roles_are_enforced(
        self, client: httpx.AsyncClient, company: tuple[TenantHandle, Member, Member], make_tenant: Any
    ) -> None:
        tenant, admin, agent = company
        sid = (await create_whatsapp_session(client, admin, "suporte"))["id"]
        other = await (await make_tenant("Outra")).member(Role.admin)
        for method, path in (
            ("GET", f"{BASE}/{sid}"),
            ("GET", f"{BASE}/{sid}/details"),
            ("POST", f"{BASE}/{sid}/restart"),
            ("PATCH", f"{BASE}/{sid}"),
            ("DELETE", f"{BASE}/{sid}"),
            ("GET", f"{BASE}/{sid}/qr.png"),
            ("GET", f"/session/{sid}/details"),
            ("POST", f"/session/{sid}/restart"),
        ):
            answer = await client.request(method, path, headers=other.headers, json={} if method == "PATCH" else None)
            assert answer.status_code == 404, (method, path, answer.status_code)
        assert (await client.get(BASE, headers=other.headers)).json() == []
        assert (await client.get("/session/stats", headers=other.headers)).json()["total"] == 0

        assert [s["id"] for s in (await client.get(BASE, headers=agent.headers)).json()] == [sid]
        assert (await client.post(f"{BASE}/{sid}/restart", headers=agent.headers)).status_code == 403
        assert (
            await client.post(BASE, json={"name": "x", "transport": "fake"}, headers=agent.headers)
        ).status_code == 403
        member = await tenant.member(Role.member)
        assert (await client.get(BASE, headers=member.headers)).status_code == 403

    async def test_bad_input_is_refused_clearly(
        self, client: httpx.AsyncClient, company: tuple[TenantHandle, Member, Member]
    ) -> None:
        _, admin, _ = company
        await create_whatsapp_session(client, admin, "vendas")
        duplicate = await client.post(BASE, json={"name": "VENDAS", "transport": "fake"}, headers=admin.headers)
        assert duplicate.status_code == 409
        unknown = await client.post(BASE, json={"name": "x", "transport": "carrier-pigeon"}, headers=admin.headers)
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "transport"
        assert (
            await client.post(BASE, json={"name": "<script>", "transport": "fake"}, headers=admin.headers)
        ).status_code == 422
        assert (await client.get(f"{BASE}/not-a-uuid", headers=admin.headers)).status_code == 422
        assert (await client.get(f"{BASE}/{uuid.uuid4()}/qr.gif", headers=admin.headers)).status_code == 404


class TestMaintenance:
    async def test_stats_sync_cleanup_and_remove(
        self,
        client: httpx.AsyncClient,
        company: tuple[TenantHandle, Member, Member],
        fake: FakeTransport,
        app: FastAPI,
    ) -> None:
        tenant, admin, _ = company
        working = await create_whatsapp_session(client, admin, "a")
        key = SessionKey(tenant.id, uuid.UUID(working["id"]))
        await wait_status(client, admin, working["id"], "SCAN_QR_CODE")
        await fake.scan(key, "+5511900000000")
        await wait_status(client, admin, working["id"], "WORKING")
        idle = await create_whatsapp_session(client, admin, "b")
        await wait_status(client, admin, idle["id"], "SCAN_QR_CODE")

        # the database says WORKING for a session this process is not running: sync corrects it
        async with tenant.db.transaction(RlsContext(tenant.id, None, "service")) as session:
            await driver(session).execute(
                "UPDATE whatsapp_sessions SET status = 'WORKING', last_seen = now() - interval '5 minutes' "
                "WHERE tenant_id = $1 AND id = $2",
                tenant.id,
                uuid.UUID(idle["id"]),
            )
        await app.state.papo.whatsapp.stop(SessionKey(tenant.id, uuid.UUID(idle["id"])))  # this process lets go
        changes = (await client.post("/session/sync", headers=admin.headers)).json()
        assert changes == [{"id": idle["id"], "database": "WORKING", "memory": "STOPPED"}]
        assert (await client.post("/session/sync", headers=admin.headers)).json() == []  # they agree now

        stats = (await client.get(f"{BASE}/stats", headers=admin.headers)).json()
        assert stats["total"] == 2
        assert stats["by_status"]["WORKING"] == 1
        assert stats["by_status"]["STOPPED"] == 1

        orphan = fake.store_dir / f"{tenant.id.hex}-{uuid.uuid4().hex}.json"
        orphan.write_text("{}")
        async with tenant.db.transaction(RlsContext(tenant.id, None, "service")) as session:
            await driver(session).execute(
                "UPDATE whatsapp_sessions SET created_at = now() - interval '90 days', last_seen = NULL "
                "WHERE tenant_id = $1 AND id = $2",
                tenant.id,
                uuid.UUID(idle["id"]),
            )
        report = (await client.post("/session/cleanup", headers=admin.headers)).json()
        assert report == {"examined": 2, "deactivated": 1, "files_removed": 1, "errors": []}
        assert not orphan.exists()
        assert fake.has_credentials(key)  # the working session keeps its credentials

        assert (await client.delete(f"{BASE}/{working['id']}", headers=admin.headers)).status_code == 204
        assert not fake.has_credentials(key)  # logged out (the in-process client runs background tasks first)
        assert (await client.get(BASE, headers=admin.headers)).json() == []
        kept = (await client.get(f"{BASE}?include_inactive=true", headers=admin.headers)).json()
        assert {s["name"] for s in kept} == {"a", "b"}
        assert (await client.post(f"{BASE}/{working['id']}/restart", headers=admin.headers)).status_code == 404


class TestLegacyImport:
    async def test_sessions_json_imports_once_and_skips_bad_entries(
        self,
        client: httpx.AsyncClient,
        company: tuple[TenantHandle, Member, Member],
        settings: Settings,
        tmp_path: Path,
    ) -> None:
        tenant, admin, _ = company
        legacy = tmp_path / "sessions.json"
        legacy.write_text(
            json.dumps(
                [
                    {"name": "vendas", "status": "CONNECTED", "phoneNumber": "+5511911112222"},
                    {"id": "suporte", "status": "DISCONNECTED"},
                    {"status": "CONNECTED"},
                    "not an object",
                    {"name": "x" * 300},
                ]
            )
        )
        first = papo(settings, "whatsapp", "import-sessions", str(legacy), "--tenant", str(tenant.id), "--json")
        report = json.loads(first.stdout)
        assert report["imported"] == ["vendas", "suporte"]
        assert [s["reason"] for s in report["skipped"]] == ["no usable name"] * 3
        again = papo(settings, "whatsapp", "import-sessions", str(legacy), "--tenant", str(tenant.id))
        assert "skipped vendas: already imported" in again.stdout
        assert "imported" not in again.stdout.replace("already imported", "")
        sessions = (await client.get(BASE, headers=admin.headers)).json()
        vendas = next(s for s in sessions if s["name"] == "vendas")
        assert vendas["phone_number"] == "+5511911112222"
        assert vendas["status"] == "STOPPED"
        assert "was CONNECTED" in vendas["status_reason"]
        legacy.write_text("{not json")
        broken = papo(settings, "whatsapp", "import-sessions", str(legacy), "--tenant", str(tenant.id), check=False)
        assert broken.returncode == 1
        assert "not JSON" in broken.stderr


class TestSeedShape:
    async def test_seed_paths_answer_in_the_seeds_shape_by_id_or_name(
        self, client: httpx.AsyncClient, company: tuple[TenantHandle, Member, Member], make_tenant: Any
    ) -> None:
        tenant, admin, agent = company
        created = await client.post("/session", json={"name": "vendas", "transport": "fake"}, headers=admin.headers)
        assert created.status_code == 201, created.text
        seed = created.json()
        assert seed["companyId"] == str(tenant.id)
        assert seed["name"] == "vendas"
        assert {"phoneNumber", "qrCode", "isActive", "lastSeen", "createdAt", "updatedAt"} <= seed.keys()
        await wait_status(client, admin, seed["id"], "SCAN_QR_CODE")

        by_name = (await client.get("/session/vendas", headers=admin.headers)).json()
        assert by_name["id"] == seed["id"]
        assert (by_name["status"], by_name["papo"]["status"]) == ("CONNECTING", "SCAN_QR_CODE")
        assert by_name["qrCode"]  # admins pair the number
        as_agent = (await client.get(f"/session/{seed['id']}", headers=agent.headers)).json()
        assert as_agent["qrCode"] is None  # the code that pairs the number is not an agent's
        restarted = await client.post("/session/vendas/restart", headers=admin.headers)
        assert restarted.status_code == 202
        assert restarted.json()["id"] == seed["id"]
        details = (await client.get("/session/vendas/details", headers=admin.headers)).json()
        assert details["id"] == seed["id"]

        broken = await client.post(
            "/session",
            json={"name": "quebrada", "transport": "fake", "config": {"fail_start": True}},
            headers=admin.headers,
        )
        await wait_status(client, admin, broken.json()["id"], "FAILED")
        failed = (await client.get("/session/quebrada", headers=admin.headers)).json()
        assert failed["status"] == "DISCONNECTED"
        assert "failed to start" in failed["statusReason"]  # the reason stays visible
        assert failed["papo"]["status"] == "FAILED"

        other = await (await make_tenant("Outra")).member(Role.admin)
        for path in ("/session/vendas", f"/session/{seed['id']}", "/session/nenhuma"):
            assert (await client.get(path, headers=other.headers)).status_code == 404
        assert [s["name"] for s in (await client.get("/session", headers=other.headers)).json()] == []

        document = (await client.get("/openapi.json")).json()
        assert "/session/{session_id}/restart" in document["paths"]
        schema = document["components"]["schemas"]["SeedSession"]
        assert schema["examples"][0]["status"] == "CONNECTED"
