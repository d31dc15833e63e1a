"""Rate limits: the GCRA arithmetic on both backends, one budget across processes, and the HTTP
answers (429, Retry-After, RateLimit-* headers) on the paths users actually hit."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from papo.auth.models import Role
from papo.ops.ratelimit import Backend, Limit, PostgresBackend, RateLimiter, RedisBackend
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session

REDIS_URL = os.environ.get("PAPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["postgres", "redis"])
async def backends(request: pytest.FixtureRequest, database: ProvisionedDatabase) -> Any:
    """Two independent backend clients on one store, as two server processes would hold."""
    made: list[Backend] = []

    def make() -> Backend:
        backend: Backend = RedisBackend(REDIS_URL) if request.param == "redis" else PostgresBackend(dsn)
        made.append(backend)
        return backend

    dsn = plain_dsn(database.app_url)

    if request.param == "redis":
        probe = redis.Redis.from_url(REDIS_URL)
        try:
            await probe.ping()  # a missing Redis fails the test here, loudly
        finally:
            await probe.aclose()
    yield make
    for backend in made:
        await backend.close()


async def test_budget_is_shared_and_exact_under_concurrency(backends: Any) -> None:
    limit = Limit("burst", 20, 60.0)
    first = RateLimiter(backends(), {"burst": limit})
    second = RateLimiter(backends(), {"burst": limit})
    identity = f"user:{uuid.uuid4()}"
    decisions = await asyncio.gather(*(limiter.check("burst", identity) for limiter in [first, second] * 25))
    allowed = [d for d in decisions if d is not None and d.allowed]
    refused = [d for d in decisions if d is not None and not d.allowed]
    assert len(allowed) == 20 and len(refused) == 30
    assert sorted(d.remaining for d in allowed) == list(range(20))
    for refusal in refused:
        # one unit comes back every period / count = 3 s
        assert 0 < refusal.retry_after_seconds <= 3.0
        assert refusal.headers()["Retry-After"] in {"1", "2", "3"}
        assert refusal.headers()["RateLimit-Remaining"] == "0"
    # another identity has its own budget; looking does not spend
    other = f"user:{uuid.uuid4()}"
    peek = await first.check("burst", other, consume=False)
    assert peek is not None and peek.allowed and peek.remaining == 20
    spent = await second.check("burst", other)
    assert spent is not None and spent.remaining == 19


async def test_busy_keys_lease_units_and_never_exceed_the_limit(backends: Any) -> None:
    limit = Limit("busy", 200, 60.0)  # leases of 10 units for a key in use
    first = RateLimiter(backends(), {"busy": limit})
    second = RateLimiter(backends(), {"busy": limit})
    identity = f"key:{uuid.uuid4()}"

    async def hammer(limiter: RateLimiter) -> int:
        allowed = 0
        for _ in range(150):
            decision = await limiter.check("busy", identity)
            allowed += bool(decision and decision.allowed)
        return allowed

    counts = await asyncio.gather(hammer(first), hammer(second))
    assert sum(counts) <= 200  # the shared bucket gave out no more than the limit
    assert sum(counts) >= 200 - 2 * 9  # at most one unspent lease per process is lost
    assert min(counts) > 0


async def test_concurrent_requests_of_a_busy_key_wait_for_one_lease(backends: Any) -> None:
    backend = backends()
    trips = 0

    class CountedTrips:
        """The real backend, with its trips to the shared bucket counted."""

        async def gcra(self, key: bytes, interval: float, period: float, consume: bool) -> tuple[bool, float, float]:
            nonlocal trips
            trips += 1
            return await backend.gcra(key, interval, period, consume)

    limiter = RateLimiter(CountedTrips(), {"busy": Limit("busy", 100_000, 60.0)})  # type: ignore[arg-type]
    identity = f"user:{uuid.uuid4()}"
    first = await limiter.check("busy", identity)  # one unit; the key is busy from now on
    decisions = await asyncio.gather(*(limiter.check("busy", identity) for _ in range(40)))
    assert first is not None and first.allowed
    assert all(d is not None and d.allowed for d in decisions)
    # 40 at once from leases of 20 units: the first check's trip and two or three leases, where
    # each request took its own lease before (41 trips)
    assert trips <= 4


async def test_allowance_refills_with_time(backends: Any) -> None:
    limiter = RateLimiter(backends(), {"fast": Limit("fast", 2, 0.4)})
    identity = secrets.token_hex(4)
    outcomes = [(await limiter.check("fast", identity)) for _ in range(3)]
    assert [d.allowed for d in outcomes if d] == [True, True, False]
    refusal = outcomes[2]
    assert refusal is not None
    await asyncio.sleep(refusal.retry_after_seconds + 0.05)
    again = await limiter.check("fast", identity)
    assert again is not None and again.allowed


async def test_message_limit_over_http(settings: Settings, database: ProvisionedDatabase, make_tenant: Any) -> None:
    from papo.app import create_app

    limited = settings.model_copy(
        update={"rate_limit_user_messages_per_minute": 3, "rate_limit_api_key_messages_per_minute": 2}
    )
    application = create_app(limited)
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://papo.test") as http,
    ):
        session = await create_session(http, member)
        url = f"/api/v1/sessions/{session['id']}/messages"
        answers = [await http.post(url, json={"content": f"hello {n}"}, headers=member.headers) for n in range(4)]
        assert [a.status_code for a in answers] == [201, 201, 201, 429]
        assert [a.headers.get("ratelimit-remaining") for a in answers[:3]] == ["2", "1", "0"]
        assert answers[0].headers["ratelimit-limit"] == "3"
        refused = answers[3]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"] == "urn:papo:problem:rate-limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        history = await http.get(url, headers=member.headers)
        assert [m["content"] for m in history.json()["items"]] == ["hello 0", "hello 1", "hello 2"]  # nothing written
        # The seed's endpoint shares the same budget.
        legacy = await http.post(
            "/api/chat/message", json={"sessionId": session["id"], "message": "more"}, headers=member.headers
        )
        assert legacy.status_code == 429
        # Another member of the same tenant is not affected.
        other = await tenant.member(Role.member)
        other_session = await create_session(http, other)
        fine = await http.post(
            f"/api/v1/sessions/{other_session['id']}/messages", json={"content": "hi"}, headers=other.headers
        )
        assert fine.status_code == 201


async def test_failed_sign_ins_lock_the_account_for_a_while(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    wrong = {"email": member.email, "password": "not-the-password", "tenant_id": str(tenant.id)}
    for _ in range(5):
        assert (await client.post("/api/v1/auth/token", json=wrong)).status_code == 401
    right = {**wrong, "password": member.password}
    refused = await client.post("/api/v1/auth/token", json=right)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"].startswith("5;w=900")
    # A different account from the same address still signs in.
    colleague = await tenant.member(Role.member)
    ok = await client.post(
        "/api/v1/auth/token",
        json={"email": colleague.email, "password": colleague.password, "tenant_id": str(tenant.id)},
    )
    assert ok.status_code == 200


async def test_failures_count_across_server_processes(
    two_servers: tuple[str, str, asyncio.subprocess.Process], make_tenant: Any
) -> None:
    url_a, url_b, _ = two_servers
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    wrong = {"email": member.email, "password": "nope-nope", "tenant_id": str(tenant.id)}
    async with httpx.AsyncClient() as http:
        for url in (url_a, url_b, url_a, url_b, url_a):
            assert (await http.post(f"{url}/api/v1/auth/token", json=wrong)).status_code == 401
        right = {**wrong, "password": member.password}
        assert (await http.post(f"{url_b}/api/v1/auth/token", json=right)).status_code == 429
        assert (await http.post(f"{url_a}/api/v1/auth/token", json=right)).status_code == 429
