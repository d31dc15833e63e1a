"""Sign-in guessing: attempts are counted before the password is checked, so a burst of concurrent
guesses gets no more checks than the limit; further attempts wait a growing, capped delay (longer
per address than per account), and the account's owner signs in once the delay has run out."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from fastapi import FastAPI

from papo.app import app_state_of
from papo.auth.models import Role
from papo.errors import Unauthorized
from papo.ops.ratelimit import (
    SIGN_IN_FORGET,
    Attempt,
    Backend,
    Penalty,
    PostgresBackend,
    RateLimited,
    RateLimiter,
    RedisBackend,
    address_block,
)
from tests.conftest import ProvisionedDatabase, plain_dsn

REDIS_URL = os.environ.get("PAPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _address() -> str:
    """An address of its own, so no other test's failures count against this one."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


@pytest.fixture
async def stranger(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(_address(), 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as http:
        yield http


@pytest.fixture(params=["postgres", "redis"])
async def backend(request: pytest.FixtureRequest, database: ProvisionedDatabase) -> AsyncIterator[Backend]:
    made: Backend
    if request.param == "redis":
        probe = redis.Redis.from_url(REDIS_URL)
        try:
            await probe.ping()  # a missing Redis fails the test here, loudly
        finally:
            await probe.aclose()
        made = RedisBackend(REDIS_URL)
    else:
        made = PostgresBackend(plain_dsn(database.app_url))
    yield made
    await made.close()


async def test_concurrent_wrong_passwords_get_at_most_the_limit_of_checks(
    app: FastAPI, stranger: httpx.AsyncClient, make_tenant: Any
) -> None:
    """Before the fix, 40 concurrent wrong passwords got 21 real checks against a limit of 5: every
    request looked at the count before any of them had added to it."""
    limiter = app_state_of(app).limiter
    free = limiter.penalties["sign_in_account"].free
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    wrong = {"email": member.email, "password": "not-the-password", "tenant_id": str(tenant.id)}
    checks_before = limiter.password_checks

    answers = await asyncio.gather(*(stranger.post("/api/v1/auth/token", json=wrong) for _ in range(40)))

    statuses = sorted(answer.status_code for answer in answers)
    assert limiter.password_checks - checks_before == free
    assert statuses == [401] * free + [429] * (40 - free)
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == f'{free};w={int(SIGN_IN_FORGET)};name="sign_in_account"'


async def test_the_owner_signs_in_once_the_delay_has_run_out(
    app: FastAPI, stranger: httpx.AsyncClient, make_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = app_state_of(app).limiter
    # A short delay so the test does not wait 30 s; the guard itself is the production one.
    short = Penalty("sign_in_account", 3, first_delay=2.0, max_delay=2.0, forget=SIGN_IN_FORGET)
    monkeypatch.setitem(limiter.penalties, "sign_in_account", short)
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    wrong = {"email": member.email, "password": "a stranger's guess", "tenant_id": str(tenant.id)}
    right = {**wrong, "password": member.password}
    for _ in range(3):
        assert (await stranger.post("/api/v1/auth/token", json=wrong)).status_code == 401
    held = await stranger.post("/api/v1/auth/token", json=right)
    assert held.status_code == 429  # even the right password waits: nothing is checked meanwhile

    owner = httpx.ASGITransport(app=app, client=(_address(), 40001))  # the owner is somewhere else
    async with httpx.AsyncClient(transport=owner, base_url="http://papo.test") as http:
        signed_in = None
        for _ in range(50):  # the delay runs on the database's clock, so poll rather than assume
            await asyncio.sleep(0.2)
            signed_in = await http.post("/api/v1/auth/token", json=right)
            if signed_in.status_code != 429:
                break
        assert signed_in is not None and signed_in.status_code == 200, signed_in.text if signed_in else None
        # The right password cleared the account: the next mistake is a plain 401, not a wait.
        assert (await http.post("/api/v1/auth/token", json=wrong)).status_code == 401


async def _attempt_when_allowed(backend: Backend, key: bytes, penalty: Penalty) -> Attempt:
    for _ in range(200):
        attempt = await backend.attempt(key, penalty)
        if attempt.allowed:
            return attempt
        await asyncio.sleep(attempt.wait + 0.005)
    raise AssertionError("the guard never let an attempt through")


async def test_each_failure_after_the_free_ones_doubles_the_wait_up_to_the_cap(backend: Backend) -> None:
    penalty = Penalty("test_guard", 3, first_delay=0.2, max_delay=0.8, forget=60.0)
    key = secrets.token_bytes(20)
    earned = []
    for _ in range(7):
        attempt = await _attempt_when_allowed(backend, key, penalty)
        earned.append(round(attempt.not_before - attempt.now, 4))
        early = await backend.attempt(key, penalty)
        if earned[-1] > 0:  # told to wait, and for no longer than the delay the failure earned
            assert not early.allowed
            assert 0 < early.wait <= earned[-1] + 1e-6
        else:
            await backend.settle(key, early, clear=False)  # that probe was allowed: take it back
    assert earned == [0.0, 0.0, 0.2, 0.4, 0.8, 0.8, 0.8]
    assert earned == [round(penalty.delay(n), 4) for n in range(1, 8)]

    # The owner's right password clears the key: the next attempt starts from the beginning.
    last = await _attempt_when_allowed(backend, key, penalty)
    await backend.settle(key, last, clear=True)
    fresh = await backend.attempt(key, penalty)
    assert fresh.allowed and fresh.failures == 1


async def test_an_attempt_taken_back_leaves_no_trace(backend: Backend) -> None:
    penalty = Penalty("test_guard", 2, first_delay=30.0, max_delay=60.0, forget=60.0)
    key = secrets.token_bytes(20)
    first = await backend.attempt(key, penalty)
    second = await backend.attempt(key, penalty)
    assert first.allowed and second.allowed and second.wait > 29
    await backend.settle(key, second, clear=False)  # e.g. the database failed during the check
    third = await backend.attempt(key, penalty)
    assert third.allowed and third.failures == 2


async def test_an_address_is_held_back_across_accounts(backend: Backend) -> None:
    limiter = RateLimiter(
        backend,
        {},
        penalties={
            "sign_in_account": Penalty("sign_in_account", 5, 30.0, 300.0, SIGN_IN_FORGET),
            "sign_in_address": Penalty("sign_in_address", 3, 30.0, 3600.0, SIGN_IN_FORGET),
        },
    )
    address, elsewhere = _address(), _address()

    async def wrong() -> None:
        raise Unauthorized("wrong e-mail or password")

    async def right() -> str:
        return "signed in"

    # A right password from this address takes its own attempt back: it never counts.
    assert await limiter.sign_in(address, f"{uuid.uuid4()}@example.com", right) == "signed in"
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await limiter.sign_in(address, f"{uuid.uuid4()}@example.com", wrong)
    with pytest.raises(RateLimited) as refused:
        await limiter.sign_in(address, f"{uuid.uuid4()}@example.com", right)
    assert refused.value.decision.limit.name == "sign_in_address"
    assert refused.value.decision.retry_after_seconds > 29
    # Another address is not held back by this one's failures.
    assert await limiter.sign_in(elsewhere, f"{uuid.uuid4()}@example.com", right) == "signed in"


async def test_the_sign_in_form_is_guarded_the_same_way(
    app: FastAPI, stranger: httpx.AsyncClient, make_tenant: Any
) -> None:
    limiter = app_state_of(app).limiter
    free = limiter.penalties["sign_in_account"].free
    member = await (await make_tenant()).member(Role.member)
    page = await stranger.get("/login")
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None, page.text
    form = {"email": member.email, "password": "wrong guess", "csrf_token": token.group(1), "next": "/"}
    checks_before = limiter.password_checks

    answers = await asyncio.gather(*(stranger.post("/login", data=form) for _ in range(12)))

    assert sorted(answer.status_code for answer in answers) == [401] * free + [429] * (12 - free)
    assert limiter.password_checks - checks_before == free
    held = await stranger.post("/login", data={**form, "password": member.password})
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1


async def test_a_stranger_guessing_cannot_lock_the_owner_out(backend: Backend) -> None:
    """Issue 13 review: one guess each time the delay runs out used to keep the owner's right
    password refused for as long as the stranger liked. The tight guard is per account and place."""
    limiter = RateLimiter(
        backend,
        {},
        penalties={
            "sign_in_account": Penalty("sign_in_account", 2, 30.0, 300.0, SIGN_IN_FORGET),
            "sign_in_account_everywhere": Penalty("sign_in_account_everywhere", 6, 30.0, 300.0, SIGN_IN_FORGET),
            "sign_in_address": Penalty("sign_in_address", 50, 30.0, 3600.0, SIGN_IN_FORGET),
        },
    )
    account = f"{uuid.uuid4()}@example.com"

    async def wrong() -> None:
        raise Unauthorized("wrong e-mail or password")

    async def right() -> str:
        return "signed in"

    stranger = _address()
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await limiter.sign_in(stranger, account, wrong)
    with pytest.raises(RateLimited) as held:
        await limiter.sign_in(stranger, account, wrong)
    assert held.value.decision.limit.name == "sign_in_account"
    assert await limiter.sign_in(_address(), account, right) == "signed in"  # the owner, elsewhere

    # A campaign from many places does reach the account-wide guard.
    for _ in range(6):
        with pytest.raises(Unauthorized):
            await limiter.sign_in(_address(), account, wrong)
    with pytest.raises(RateLimited) as spread:
        await limiter.sign_in(_address(), account, right)
    assert spread.value.decision.limit.name == "sign_in_account_everywhere"


def test_ipv6_addresses_are_guarded_by_their_64() -> None:
    assert address_block("2001:db8:1:2:aaaa::1") == address_block("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_block("2001:db8:1:3::1") != address_block("2001:db8:1:2::1")
    assert address_block("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_block("testclient") == "testclient"
