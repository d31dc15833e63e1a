"""Tenant settings are cached per process and dropped explicitly when a tenant changes: at once in
the process that changed it, and through the database notification everywhere else."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.auth.models import Role
from tests.conftest import ProvisionedDatabase, plain_dsn


async def test_cached_until_changed_by_any_path(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Cache")
    admin = await tenant.member(Role.admin)
    cache = app.state.papo.tenants
    login = f"/login?tenant={tenant.id}"
    await client.get(login)
    hits = cache.hits
    for _ in range(3):
        await client.get(login)
    assert cache.hits == hits + 3  # the brand came from memory

    patched = await client.patch(
        "/api/v1/tenant/settings", json={"brand": {"name": "Padaria Central"}}, headers=admin.headers
    )
    assert patched.status_code == 204
    assert "Padaria Central" in (await client.get(login)).text  # the changing process forgot at once

    # A change that did not go through this process (another server, Clerk's webhook, SQL):
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "UPDATE tenants SET settings = jsonb_set(settings, '{brand,name}', '\"Padaria Nova\"') WHERE id = $1",
            tenant.id,
        )
    finally:
        await owner.close()
    for _ in range(250):  # the notification reaches this process's listener within moments
        if "Padaria Nova" in (await client.get(login)).text:
            break
        await asyncio.sleep(0.02)
    assert "Padaria Nova" in (await client.get(login)).text


async def test_a_rolled_back_change_is_never_cached(app: FastAPI, make_tenant: Any) -> None:
    from papo.auth import tenant_settings
    from papo.auth.service import Principal

    tenant = await make_tenant("Rollback")
    admin = await tenant.member(Role.admin)
    principal = Principal(tenant.id, admin.user_id, "admin")
    state = app.state.papo
    before = await _name(state, tenant.id)

    class Abandon(Exception):
        pass

    try:
        async with state.db.transaction(principal.context()) as session:
            await tenant_settings.update(session, principal, state.tenants, brand={"name": "Never"}, signup_open=None)
            mid_way = await state.tenants.public(session, tenant.id)
            assert mid_way.brand["name"] == "Never"  # its own write, read around the cache
            raise Abandon
    except Abandon:
        pass
    assert await _name(state, tenant.id) == before


async def _name(state: Any, tenant_id: Any) -> str:
    async with state.db.transaction() as session:
        public = await state.tenants.public(session, tenant_id)
    return str(public.brand.get("name"))
