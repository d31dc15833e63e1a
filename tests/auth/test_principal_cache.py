"""A process remembers who a credential is, and forgets the moment access is withdrawn: at once in
the process that withdrew it, on the access notice everywhere else, and never trusts what it
remembered while it could not hear those notices."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.auth.access_notices import Grant
from papo.auth.models import Role
from papo.auth.principal_cache import Credential, PrincipalCache, Recalled
from papo.auth.service import Principal
from papo.db.engine import Database
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.realtime.test_revocation import csrf_token, signed_in_browser


async def _until_refused(client: httpx.AsyncClient, headers: dict[str, str], seconds: float = 5.0) -> int:
    """The status once the request is refused, or the last status when the time is up."""
    deadline = time.monotonic() + seconds
    while True:
        status = (await client.get("/api/v1/me", headers=headers)).status_code
        if status == 401 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.02)


async def test_a_credential_seen_before_is_not_authenticated_again(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant = await make_tenant("Remembered")
    member = await tenant.member()
    key = await tenant.api_key()
    cache: PrincipalCache = app.state.papo.principals
    assert cache.enabled and cache.listening()
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


async def test_access_withdrawn_by_another_process_is_forgotten_when_its_notice_arrives(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Elsewhere")
    member = await tenant.member()
    key = await tenant.api_key()
    cache: PrincipalCache = app.state.papo.principals
    for who in (member, key):
        for _ in range(2):
            assert (await client.get("/api/v1/me", headers=who.headers)).status_code == 200
    remembered = len(cache.entries)
    owner = await asyncpg.connect(plain_dsn(database.owner_url))  # another server, the operator's CLI
    try:
        await owner.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key.id)
        await owner.execute("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2", tenant.id, member.user_id)
    finally:
        await owner.close()
    assert await _until_refused(client, key.headers) == 401
    assert await _until_refused(client, member.headers) == 401
    assert len(cache.entries) <= remembered - 2  # dropped by the notices, long before their time was up


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


async def test_nothing_is_remembered_while_notices_cannot_arrive(db: Database, make_tenant: Any) -> None:
    tenant = await make_tenant("Deaf")
    listening = True
    cache = PrincipalCache(60, lambda: listening)
    credential = Credential("bearer", "token")
    recalled = Recalled(Principal(tenant.id, "u1", "member"), None)
    async with db.transaction() as session:
        cache.remember(session, credential, recalled, epoch_before=cache.epoch)
    assert cache.recall(credential) == recalled
    listening = False
    assert cache.recall(credential) is None
    assert cache.entries == {}  # what it held is not trusted once the listener is back either


async def test_a_notice_during_the_authentication_keeps_its_result_out(db: Database, make_tenant: Any) -> None:
    tenant = await make_tenant("Race")
    cache = PrincipalCache(60, lambda: True)
    credential = Credential("bearer", "token")
    principal = Principal(tenant.id, "u1", "member")
    async with db.transaction() as session:
        epoch = cache.epoch
        # the membership is removed and announced while this transaction still works on its read
        cache.notified(f'{{"kind": "membership", "tenant_id": "{tenant.id}", "user_id": "u1"}}')
        cache.remember(session, credential, Recalled(principal, None), epoch_before=epoch)
    assert cache.recall(credential) is None

    async with db.transaction() as session:
        cache.remember(session, credential, Recalled(principal, None), epoch_before=cache.epoch)
    assert cache.recall(credential) is not None
    cache.notified(f'{{"kind": "membership", "tenant_id": "{uuid.uuid4()}", "user_id": "u1"}}')
    assert cache.recall(credential) is not None  # another tenant's membership of the same user id
    cache.notified(f'{{"kind": "membership", "tenant_id": "{tenant.id}", "user_id": "u1"}}')
    assert cache.recall(credential) is None


async def test_an_entry_ends_with_its_credential_and_its_time(db: Database, make_tenant: Any) -> None:
    tenant = await make_tenant("Expiry")
    cache = PrincipalCache(60, lambda: True)
    expired, fresh = Credential("bearer", "old"), Credential("bearer", "new")
    async with db.transaction() as session:
        cache.remember(
            session,
            expired,
            Recalled(Principal(tenant.id, "u", "member", expires_at=time.time() - 1), None),
            epoch_before=0,
        )
        cache.remember(session, fresh, Recalled(Principal(tenant.id, "u", "member"), None), epoch_before=0)
    assert cache.recall(expired) is None
    assert cache.recall(fresh) is not None
    short = PrincipalCache(0.05, lambda: True)
    async with db.transaction() as session:
        short.remember(session, fresh, Recalled(Principal(tenant.id, "u", "member"), None), epoch_before=0)
    assert short.recall(fresh) is not None
    await asyncio.sleep(0.06)
    assert short.recall(fresh) is None
    assert Grant.of(Principal(tenant.id, "u", "member"), None).user_id == "u"
