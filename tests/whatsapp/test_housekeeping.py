"""Seed 004's automatic care of sessions: the periodic clean-up, sessions loaded when they are used,
credential stores checked before a restore, and the legacy sessions.json imported at start-up."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.app import app_state_of
from papo.auth.models import Role
from papo.cli import import_legacy_sessions_file
from papo.db.engine import RlsContext, driver
from papo.settings import Settings
from papo.whatsapp.housekeeping import CLEANUP_LOCK, clean_up_every_company
from papo.whatsapp.transports.base import SessionKey
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_whatsapp import FakeTransport
from tests.support import WHATSAPP_SESSIONS as BASE
from tests.support import Member, TenantHandle, create_whatsapp_session, wait_status
from tests.whatsapp.test_cloud import INBOX


async def as_service(tenant: TenantHandle, sql: str, *args: Any) -> None:
    async with tenant.db.transaction(RlsContext(tenant.id, None, "service")) as session:
        await driver(session).execute(sql, tenant.id, *args)


async def let_go(app: FastAPI, key: SessionKey) -> None:
    """What this process looks like after another one that ran the session died: nobody holds it."""
    hub = app_state_of(app).whatsapp
    await hub.stop(key)
    await hub.ownership.release(key)
    assert key not in hub.live


async def test_the_clean_up_runs_on_its_own_for_every_company(
    client: httpx.AsyncClient, make_tenant: Any, fake: FakeTransport, app: FastAPI, database: ProvisionedDatabase
) -> None:
    shop, idle_company = await make_tenant("Loja parada"), await make_tenant("Sem sessões")
    admin = await shop.member(Role.admin)
    stale = await create_whatsapp_session(client, admin, "antiga")
    fresh = await create_whatsapp_session(client, admin, "nova")
    for created in (stale, fresh):
        await wait_status(client, admin, created["id"], "SCAN_QR_CODE")
        assert (await client.post(f"{BASE}/{created['id']}/stop", headers=admin.headers)).status_code == 202
        await wait_status(client, admin, created["id"], "STOPPED")
    await as_service(
        shop,
        "UPDATE whatsapp_sessions SET created_at = now() - interval '90 days', last_seen = NULL "
        "WHERE tenant_id = $1 AND id = $2",
        uuid.UUID(stale["id"]),
    )
    orphan = fake.store_dir / f"{idle_company.id.hex}-{uuid.uuid4().hex}.json"  # a company with no session left
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_text("{}")
    backup = fake.store_dir / f"{shop.id.hex}-{uuid.uuid4().hex}.json.bak"  # an operator's copy: not papo's
    backup.write_text("{}")
    hub = app_state_of(app).whatsapp

    holder = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", CLEANUP_LOCK)  # another process's round
        assert await clean_up_every_company(app_state_of(app).db, hub, 30) == {}
        assert orphan.exists()
    finally:
        await holder.close()

    reports = await clean_up_every_company(app_state_of(app).db, hub, 30)
    assert reports[shop.id].deactivated == 1
    assert reports[idle_company.id].files_removed == 1
    assert not orphan.exists()
    assert backup.exists()
    listed = (await client.get(f"{BASE}?include_inactive=true", headers=admin.headers)).json()
    by_name = {s["name"]: s for s in listed}
    assert by_name["antiga"]["is_active"] is False
    assert "deactivated by clean-up" in by_name["antiga"]["status_reason"]
    assert by_name["nova"]["is_active"] is True  # stopped, but not idle for long


async def test_a_session_nobody_holds_is_loaded_when_a_reply_is_sent(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    app: FastAPI,
) -> None:
    _, _, agent, key = number
    await fake.customer_writes(key, "Oi, vocês abrem amanhã?", wa_id="5511977776666", name="Rui")
    await let_go(app, key)
    (conversation,) = (await client.get(INBOX, headers=agent.headers)).json()
    sent = await client.post(
        f"{INBOX}/{conversation['id']}/messages", json={"content": "Abrimos às 9h!"}, headers=agent.headers
    )
    assert sent.status_code == 201, sent.text
    assert key in app_state_of(app).whatsapp.live  # loaded for the send
    assert fake.sent[-1][:3] == (key, "5511977776666", "Abrimos às 9h!")
    rows = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=agent.headers)).json()
    assert next(m for m in rows if m["id"] == sent.json()["id"])["delivery_status"] == "sent"


async def test_a_session_nobody_holds_is_loaded_when_its_qr_is_asked_for(
    client: httpx.AsyncClient, make_tenant: Any, fake: FakeTransport, app: FastAPI
) -> None:
    tenant = await make_tenant("QR")
    admin = await tenant.member(Role.admin)
    created = await create_whatsapp_session(client, admin, "balcao")
    key = SessionKey(tenant.id, uuid.UUID(created["id"]))
    await wait_status(client, admin, created["id"], "SCAN_QR_CODE")
    await let_go(app, key)
    starts = fake.starts.count(key)
    assert (await client.get(f"/session/{created['name']}/qr", headers=admin.headers)).status_code == 200
    async with asyncio.timeout(10):
        while key not in app_state_of(app).whatsapp.live:  # noqa: ASYNC110  (the hub offers no event for it)
            await asyncio.sleep(0.05)
    assert fake.starts.count(key) == starts + 1
    stopped = await create_whatsapp_session(client, admin, "desligada")
    await wait_status(client, admin, stopped["id"], "SCAN_QR_CODE")
    assert (await client.post(f"{BASE}/{stopped['id']}/stop", headers=admin.headers)).status_code == 202
    await wait_status(client, admin, stopped["id"], "STOPPED")
    stopped_key = SessionKey(tenant.id, uuid.UUID(stopped["id"]))
    await client.get(f"{BASE}/{stopped['id']}/details", headers=admin.headers)
    await asyncio.sleep(0.3)
    assert stopped_key not in app_state_of(app).whatsapp.live  # one an admin stopped stays stopped


async def test_a_corrupt_credentials_store_fails_that_session_alone(
    client: httpx.AsyncClient, make_tenant: Any, fake: FakeTransport, app: FastAPI
) -> None:
    tenant = await make_tenant("Lojas")
    admin = await tenant.member(Role.admin)
    device = await client.post(BASE, json={"name": "celular", "transport": "neonize"}, headers=admin.headers)
    assert device.status_code == 201
    healthy = await create_whatsapp_session(client, admin, "fixo")
    broken_key = SessionKey(tenant.id, uuid.UUID(device.json()["id"]))
    healthy_key = SessionKey(tenant.id, uuid.UUID(healthy["id"]))
    await wait_status(client, admin, healthy["id"], "SCAN_QR_CODE")
    await fake.scan(healthy_key, "+5511944443333")
    await wait_status(client, admin, healthy["id"], "WORKING")
    for key in (broken_key, healthy_key):
        await let_go(app, key)
    await as_service(tenant, "UPDATE whatsapp_sessions SET status = 'WORKING' WHERE tenant_id = $1")
    neonize = app_state_of(app).whatsapp.transports["neonize"]
    neonize.store_path(broken_key).write_bytes(b"SQLite format 3\x00" + b"\xde\xad" * 3000)  # a half-copied store

    hub = app_state_of(app).whatsapp
    outcomes = await asyncio.gather(hub.restore(broken_key), hub.restore(healthy_key))
    assert outcomes == [False, True]
    broken = (await client.get(f"{BASE}/{device.json()['id']}", headers=admin.headers)).json()
    assert broken["status"] == "FAILED"
    assert "credentials store" in broken["status_reason"]
    assert broken_key not in hub.live
    await wait_status(client, admin, healthy["id"], "WORKING")  # its stored credentials, no QR


async def test_sessions_json_in_the_data_directory_is_imported_at_start(
    client: httpx.AsyncClient, make_tenant: Any, settings: Settings, tmp_path: Path, database: ProvisionedDatabase
) -> None:
    first, second = await make_tenant("Primeira"), await make_tenant("Segunda Loja")
    first_admin, second_admin = await first.member(Role.admin), await second.member(Role.admin)
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        second_name = await owner.fetchval("SELECT name FROM tenants WHERE id = $1", second.id)
    finally:
        await owner.close()
    (tmp_path / "sessions.json").write_text(
        json.dumps(
            [
                {"name": "vendas", "companyId": str(first.id), "status": "CONNECTED"},
                {"name": "suporte", "companyId": second_name.upper(), "status": "DISCONNECTED"},
                {"name": "perdida", "companyId": "nenhuma-empresa"},
            ]
        )
    )
    at_start = settings.model_copy(update={"data_dir": tmp_path})
    notes = await import_legacy_sessions_file(at_start)
    assert f"sessions.json: imported vendas into {first.id}" in notes
    assert f"sessions.json: companyId {second_name.upper()!r} matches {second.id} by name only" in " ".join(notes)
    assert not any("imported suporte" in note for note in notes)  # a name is no proof: the operator imports it
    assert any("'nenhuma-empresa' names no single company" in note for note in notes)
    assert not any(": imported " in note for note in await import_legacy_sessions_file(at_start))  # once

    (vendas,) = (await client.get(BASE, headers=first_admin.headers)).json()
    assert (await client.get(BASE, headers=second_admin.headers)).json() == []
    assert (vendas["name"], vendas["status"]) == ("vendas", "STOPPED")
    assert "imported from sessions.json" in vendas["status_reason"]

    (tmp_path / "sessions.json").write_text(json.dumps([{"name": "sem-empresa"}]))
    assert await import_legacy_sessions_file(at_start) == [
        "sessions.json names no companyId: import it with `papo whatsapp import-sessions --tenant ID`"
    ]
