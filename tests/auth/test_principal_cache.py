"""A process remembers who a credential is, and the database confirms it at every request: access
withdrawn anywhere (another process, SQL by hand) is refused from the next request on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.auth.models import Role
from papo.auth.principal_cache import Credential, PrincipalCache, Recalled
from papo.auth.service import Principal
from papo.db.engine import Database
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.realtime.test_revocation import csrf_token, signed_in_browser


async def test_a_credential_seen_before_is_not_authenticated_again(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant = await make_tenant("Remembered")
    member = await tenant.member()
    key = await tenant.api_key()
    cache: PrincipalCache = app.state.papo.principals
    assert cache.ttl > 0
    for who in (member.headers, key.headers):
        assert (await client.get("/api/v1/me", headers=who)).status_code == 200
        hits = cache.hits
        for _ in range(3):
            me = await client.get("/api/v1/me", headers=who)
            assert me.status_code == 200
        assert cache.hits == hits + 3
    assert me.json()["tenant_id"] == str(tenant.id)  # the remembered principal scopes the transaction
    created = await client.post("/api/v1/sessions", json={"title": "x", "assistant_id": None}, headers=member.headers)
    assert created.status_code == 201
    listed = await client.get("/api/v1/sessions", headers=member.headers)
    assert [s["id"] for s in listed.json()["items"]] == [created.json()["id"]]


async def test_withdrawing_access_in_this_process_takes_effect_on_the_next_request(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant = await make_tenant("Withdrawn")
    admin = await tenant.member(Role.admin)
    leaving = await tenant.member()
    demoted = await tenant.member(Role.admin)
    key = await tenant.api_key()
    for who in (leaving, demoted, key):
        for _ in range(2):  # the second is answered from memory
            assert (await client.get("/api/v1/me", headers=who.headers)).status_code == 200
    assert (await client.get("/api/v1/members", headers=demoted.headers)).status_code == 200

    assert (await client.delete(f"/api/v1/api-keys/{key.id}", headers=admin.headers)).status_code == 204
    assert (await client.get("/api/v1/me", headers=key.headers)).status_code == 401
    assert (await client.delete(f"/api/v1/members/{leaving.user_id}", headers=admin.headers)).status_code == 204
    assert (await client.get("/api/v1/me", headers=leaving.headers)).status_code == 401
    changed = await client.patch(f"/api/v1/members/{demoted.user_id}", json={"role": "member"}, headers=admin.headers)
    assert changed.status_code == 204
    assert (await client.get("/api/v1/members", headers=demoted.headers)).status_code == 403
    assert (await client.get("/api/v1/me", headers=demoted.headers)).json()["role"] == "member"


async def test_access_withdrawn_anywhere_is_refused_on_the_very_next_request(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Elsewhere")
    member, demoted = await tenant.member(), await tenant.member(Role.admin)
    key = await tenant.api_key()
    cache: PrincipalCache = app.state.papo.principals
    for who in (member, demoted, key):
        for _ in range(2):
            assert (await client.get("/api/v1/me", headers=who.headers)).status_code == 200
    refusals = cache.refusals
    owner = await asyncpg.connect(plain_dsn(database.owner_url))  # another server, the operator, a DBA
    try:
        await owner.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key.id)
        await owner.execute("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2", tenant.id, member.user_id)
        await owner.execute(
            "UPDATE memberships SET role = 'member' WHERE tenant_id = $1 AND user_id = $2", tenant.id, demoted.user_id
        )
    finally:
        await owner.close()
    assert (await client.get("/api/v1/me", headers=key.headers)).status_code == 401
    assert (await client.get("/api/v1/me", headers=member.headers)).status_code == 401
    assert (await client.get("/api/v1/members", headers=demoted.headers)).status_code == 403
    assert (await client.get("/api/v1/me", headers=demoted.headers)).json()["role"] == "member"
    assert cache.refusals == refusals + 3  # each remembered principal was refused by the database


async def test_a_rolled_back_authentication_is_not_remembered(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant = await make_tenant("Rolled back")
    member = await tenant.member()
    cache: PrincipalCache = app.state.papo.principals
    refused = await client.post("/api/v1/sessions", json={"title": 5}, headers=member.headers)
    assert refused.status_code == 422
    credential = Credential("bearer", member.token)
    assert credential.key() not in cache.entries
    assert (await client.get("/api/v1/me", headers=member.headers)).status_code == 200
    assert credential.key() in cache.entries


async def test_signing_out_refuses_the_browsers_cookie_at_once(live_url: str, make_tenant: Any) -> None:
    tenant = await make_tenant("Browser")
    member = await tenant.member()
    laptop = await signed_in_browser(live_url, member)
    phone = await signed_in_browser(live_url, member)
    tablet = await signed_in_browser(live_url, member)
    try:
        for browser in (laptop, phone, tablet):
            for _ in range(2):
                assert (await browser.get("/api/v1/me")).status_code == 200
        kept_cookie = f"papo_session={phone.cookies['papo_session']}"  # what a thief copied earlier
        out = await phone.post("/logout", data={"csrf_token": await csrf_token(phone)})
        assert out.status_code == 303
        async with httpx.AsyncClient(base_url=live_url) as thief:
            assert (await thief.get("/api/v1/me", headers={"Cookie": kept_cookie})).status_code == 401
        assert (await laptop.get("/api/v1/me")).status_code == 200  # the other browsers stay signed in
        out = await laptop.post("/logout", data={"csrf_token": await csrf_token(laptop), "everywhere": "true"})
        assert out.status_code == 303
        assert (await tablet.get("/api/v1/me")).status_code == 401
    finally:
        for browser in (laptop, phone, tablet):
            await browser.aclose()


async def test_an_entry_ends_with_its_credential_and_its_time(db: Database, make_tenant: Any) -> None:
    tenant = await make_tenant("Expiry")
    cache = PrincipalCache(60)
    expired, fresh = Credential("bearer", "old"), Credential("bearer", "new")
    async with db.transaction() as session:
        cache.remember(
            session,
            expired,
            Recalled(Principal(tenant.id, "u", "member", expires_at=time.time() - 1), None),
        )
        cache.remember(session, fresh, Recalled(Principal(tenant.id, "u", "member"), None))
    assert cache.recall(expired) is None
    assert cache.recall(fresh) is not None
    short = PrincipalCache(0.05)
    async with db.transaction() as session:
        short.remember(session, fresh, Recalled(Principal(tenant.id, "u", "member"), None))
    assert short.recall(fresh) is not None
    await asyncio.sleep(0.06)
    assert short.recall(fresh) is None


async def test_a_user_id_no_literal_can_hold_is_authenticated_every_time(db: Database, make_tenant: Any) -> None:
    tenant = await make_tenant("Unicode")
    cache = PrincipalCache(60)
    credential = Credential("bearer", "token")
    async with db.transaction() as session:
        cache.remember(session, credential, Recalled(Principal(tenant.id, "joão", "member"), None))
    assert cache.recall(credential) is None


async def test_papos_own_tokens_are_not_taken_as_a_providers_session_cookie(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    """A browser-bound token (or any of papo's) sent as Clerk's cookie would shed its binding."""
    tenant = await make_tenant("Cookie")
    member = await tenant.member()
    key = await tenant.api_key()
    assert (await client.get("/api/v1/me", headers=member.headers)).status_code == 200
    for secret in (member.token, key.key):
        refused = await client.get("/api/v1/me", headers={"Cookie": f"__session={secret}"})
        assert refused.status_code == 401, refused.text
