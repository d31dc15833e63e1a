"""Open streams follow the principal: demotion, removal, sign-out everywhere, API-key revocation and
token expiry close WebSocket and SSE streams within seconds; streams per user and auth frames per
socket are capped. Every change is made the way it happens for real (the admin API, the sign-out
form, SQL as the database owner) and watched on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from fastapi import FastAPI

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.auth.tokens import SigningKey, issue_token
from papo.realtime.api import StreamEnded, event_stream
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, TenantHandle

TRANSPORTS = ["websocket", "sse"]
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_TOO_MANY = 4429
STAFF_EVENT = "whatsapp.test_message"  # staff audience, like the WhatsApp inbox's events


@dataclass
class Watched:
    """One open stream read in the background: what it delivered and how it ended."""

    transport: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None  # WebSocket only
    status: int | None = None  # SSE only: the HTTP status
    reader: asyncio.Task[None] | None = None
    socket: Any = None

    def markers(self) -> list[str]:
        return [m["data"]["marker"] for m in self.messages if m.get("type") == "event" and m["event"] == STAFF_EVENT]

    @property
    def error(self) -> str:
        errors = [m["detail"] for m in self.messages if m.get("type") == "error"]
        return errors[-1] if errors else ""

    async def wait_for(self, predicate: Callable[[Watched], bool], seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            while not predicate(self):
                if self.ended.is_set():
                    raise AssertionError(f"stream ended early: {self.close_code} {self.error!r}")
                await asyncio.sleep(0.02)

    async def wait_ended(self, seconds: float = 10) -> None:
        await asyncio.wait_for(self.ended.wait(), seconds)

    async def stop(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


async def drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/realtime"


async def watch_socket(base: str, token: str, *, cookie: str | None = None, wait_ready: bool = True) -> Watched:
    headers = {"Cookie": cookie} if cookie else None
    socket = await websockets.connect(ws_url(base), additional_headers=headers)
    await socket.send(json.dumps({"type": "auth", "token": token, "since": None}))
    watched = Watched("websocket", socket=socket)

    async def read() -> None:
        try:
            async for raw in socket:
                message = json.loads(raw)
                watched.messages.append(message)
                if message.get("type") == "ready":
                    watched.ready.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            watched.close_code = socket.close_code
            watched.ended.set()

    watched.reader = asyncio.create_task(read())
    if wait_ready:
        await _ready(watched)
    return watched


async def watch_sse(
    http: httpx.AsyncClient, *, headers: dict[str, str] | None = None, wait_ready: bool = True
) -> Watched:
    watched = Watched("sse")

    async def read() -> None:
        try:
            async with http.stream("GET", "/api/v1/events", headers=headers) as response:
                watched.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    watched.messages.append({"type": "error", "detail": response.json().get("detail", "")})
                    return
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        message = json.loads(line[6:])
                        watched.messages.append(message)
                        if message.get("type") == "ready":
                            watched.ready.set()
        except httpx.HTTPError:
            pass
        finally:
            watched.ended.set()

    watched.reader = asyncio.create_task(read())
    if wait_ready:
        await _ready(watched)
    return watched


async def either(*events: asyncio.Event, seconds: float = 10) -> None:
    """Wait until one of `events` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _ready(watched: Watched) -> None:
    await either(watched.ready, watched.ended)
    assert watched.ready.is_set(), f"stream refused: {watched.close_code or watched.status} {watched.error!r}"


@contextlib.asynccontextmanager
async def bearer_stream(transport: str, base: str, token: str) -> AsyncIterator[Watched]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        if transport == "websocket":
            watched = await watch_socket(base, token)
        else:
            watched = await watch_sse(http, headers={"Authorization": f"Bearer {token}"})
        try:
            yield watched
        finally:
            await watched.stop()


async def publish_staff(connection: asyncpg.Connection, tenant_id: uuid.UUID, marker: str) -> None:
    """A staff event (the audience of WhatsApp conversations), written as the app writes it."""
    async with connection.transaction():
        await connection.execute("SELECT papo_set_context($1, NULL, 'admin')", tenant_id)
        payload = [
            {
                "tenant_id": str(tenant_id),
                "audience": "staff",
                "user_id": None,
                "type": STAFF_EVENT,
                "payload": {"marker": marker},
            }
        ]
        await connection.fetchval("SELECT papo_publish_events($1::jsonb)", json.dumps(payload))


async def as_owner(database: ProvisionedDatabase, sql: str, *args: Any) -> str:
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        return str(await owner.execute(sql, *args))
    finally:
        await owner.close()


def assert_closed(watched: Watched, code: int, detail: str) -> None:
    assert detail in watched.error, watched.messages[-3:]
    if watched.transport == "websocket":
        assert watched.close_code == code


async def signed_in_browser(base: str, member: Member) -> httpx.AsyncClient:
    """An HTTP client with its own cookie jar, signed in through the form like a browser."""
    http = httpx.AsyncClient(base_url=base, timeout=30)
    page = await http.get("/login")
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None, page.text
    form = {"email": member.email, "password": member.password, "csrf_token": token.group(1), "next": "/"}
    signed = await http.post("/login", data=form)
    assert signed.status_code == 303, signed.text
    return http


async def csrf_token(http: httpx.AsyncClient) -> str:
    page = await http.get("/")
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None, page.text
    return token.group(1)


def cookie_header(http: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in http.cookies.items())


async def socket_through_cookie(base: str, http: httpx.AsyncClient) -> Watched:
    """What the web app does: a short-lived token from the cookie, then the socket (which carries
    the cookie too, as browsers send it on the upgrade request)."""
    answer = await http.post("/web/realtime-token", headers={"X-CSRF-Token": await csrf_token(http)})
    assert answer.status_code == 200, answer.text
    return await watch_socket(base, answer.json()["token"], cookie=cookie_header(http))


def short_token(settings: Settings, member: Member, seconds: int) -> str:
    token, _ = issue_token(
        settings,
        SigningKey.load(settings),
        tenant_id=member.tenant_id,
        user_id=member.user_id,
        role=member.role,
        ttl_seconds=seconds,
    )
    return token


@pytest.fixture
async def staff(make_tenant: Any) -> tuple[TenantHandle, Member, Member]:
    tenant: TenantHandle = await make_tenant("Streams")
    return tenant, await tenant.member(Role.admin), await tenant.member(Role.agent)


class TestDemotionAndRemoval:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_demoted_agent_stops_getting_staff_events_and_is_closed(
        self,
        transport: str,
        client: httpx.AsyncClient,
        live_url: str,
        staff: tuple[TenantHandle, Member, Member],
        app_role_connection: asyncpg.Connection,
    ) -> None:
        tenant, admin, agent = staff
        async with bearer_stream(transport, live_url, agent.token) as stream:
            await publish_staff(app_role_connection, tenant.id, "before")
            await stream.wait_for(lambda s: s.markers() == ["before"])
            demoted = await client.patch(
                f"/api/v1/members/{agent.user_id}", json={"role": "member"}, headers=admin.headers
            )
            assert demoted.status_code == 204, demoted.text
            await publish_staff(app_role_connection, tenant.id, "after")
            await stream.wait_ended()
            assert stream.markers() == ["before"]
            assert_closed(stream, CLOSE_FORBIDDEN, "your role")
        # Reconnecting works, as what the member now is: no staff events.
        async with bearer_stream(transport, live_url, agent.token) as again:
            await publish_staff(app_role_connection, tenant.id, "later")
            await asyncio.sleep(0.3)
            assert again.markers() == []
            assert not again.ended.is_set()

    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_removed_member_stream_closes(
        self,
        transport: str,
        live_url: str,
        staff: tuple[TenantHandle, Member, Member],
        database: ProvisionedDatabase,
        app_role_connection: asyncpg.Connection,
    ) -> None:
        tenant, _, agent = staff
        async with bearer_stream(transport, live_url, agent.token) as stream:
            removed = await as_owner(
                database, "DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2", tenant.id, agent.user_id
            )
            assert removed == "DELETE 1"
            await publish_staff(app_role_connection, tenant.id, "after removal")
            await stream.wait_ended()
            assert stream.markers() == []
            assert_closed(stream, CLOSE_UNAUTHORIZED, "access revoked")

    async def test_other_members_streams_are_untouched(
        self,
        client: httpx.AsyncClient,
        live_url: str,
        staff: tuple[TenantHandle, Member, Member],
        app_role_connection: asyncpg.Connection,
    ) -> None:
        tenant, admin, agent = staff
        colleague = await tenant.member(Role.agent)
        async with (
            bearer_stream("websocket", live_url, agent.token) as demoted,
            bearer_stream("sse", live_url, colleague.token) as kept,
        ):
            response = await client.patch(
                f"/api/v1/members/{agent.user_id}", json={"role": "member"}, headers=admin.headers
            )
            assert response.status_code == 204
            await demoted.wait_ended()
            await publish_staff(app_role_connection, tenant.id, "still here")
            await kept.wait_for(lambda s: s.markers() == ["still here"])

    async def test_a_lost_notice_is_caught_when_the_listener_reconnects(
        self,
        live_url: str,
        staff: tuple[TenantHandle, Member, Member],
        database: ProvisionedDatabase,
    ) -> None:
        """A role change whose announcement nobody heard (the listening connection was down) is still
        found: the hub re-checks every open stream when it listens again (and on a timer)."""
        tenant, _, agent = staff
        async with bearer_stream("websocket", live_url, agent.token) as stream:
            owner = await asyncpg.connect(plain_dsn(database.owner_url))
            try:
                async with owner.transaction():  # the triggers stay on for every other session
                    await owner.execute("ALTER TABLE memberships DISABLE TRIGGER USER")
                    await owner.execute(
                        "UPDATE memberships SET role = 'member' WHERE tenant_id = $1 AND user_id = $2",
                        tenant.id,
                        agent.user_id,
                    )
                    await owner.execute("ALTER TABLE memberships ENABLE TRIGGER USER")
                killed = await owner.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'papo-realtime-listener:%'"
                )
            finally:
                await owner.close()
            assert killed
            await stream.wait_ended()
            assert_closed(stream, CLOSE_FORBIDDEN, "your role")


class TestSignOutAndKeys:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_cookie_stream_closes_after_sign_out_everywhere(
        self, transport: str, live_url: str, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Browser")
        member = await tenant.member()
        laptop = await signed_in_browser(live_url, member)
        phone = await signed_in_browser(live_url, member)
        try:
            if transport == "websocket":
                stream = await socket_through_cookie(live_url, laptop)
            else:
                stream = await watch_sse(laptop)
            out = await phone.post("/logout", data={"csrf_token": await csrf_token(phone), "everywhere": "true"})
            assert out.status_code == 303
            await stream.wait_ended()
            assert_closed(stream, CLOSE_UNAUTHORIZED, "signed out")
            await stream.stop()
        finally:
            await laptop.aclose()
            await phone.aclose()

    async def test_signing_out_one_browser_leaves_the_others_streaming(self, live_url: str, make_tenant: Any) -> None:
        tenant: TenantHandle = await make_tenant("Browser")
        member = await tenant.member()
        laptop = await signed_in_browser(live_url, member)
        phone = await signed_in_browser(live_url, member)
        try:
            kept = await socket_through_cookie(live_url, laptop)
            ended = await watch_sse(phone)
            out = await phone.post("/logout", data={"csrf_token": await csrf_token(phone)})
            assert out.status_code == 303
            await ended.wait_ended()
            await kept.socket.send(json.dumps({"type": "ping"}))
            await kept.wait_for(lambda s: s.messages[-1] == {"type": "pong"})
            await kept.stop()
        finally:
            await laptop.aclose()
            await phone.aclose()

    async def test_a_socket_with_the_cookie_of_an_ended_session_is_refused(
        self, live_url: str, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Browser")
        member = await tenant.member()
        laptop = await signed_in_browser(live_url, member)
        try:
            answer = await laptop.post("/web/realtime-token", headers={"X-CSRF-Token": await csrf_token(laptop)})
            token, cookie = answer.json()["token"], cookie_header(laptop)
            out = await laptop.post("/logout", data={"csrf_token": await csrf_token(laptop), "everywhere": "true"})
            assert out.status_code == 303
            refused = await watch_socket(live_url, token, cookie=cookie, wait_ready=False)
            await refused.wait_ended()
            assert refused.close_code == CLOSE_UNAUTHORIZED
            assert not refused.ready.is_set()
        finally:
            await laptop.aclose()

    async def test_api_keys_cannot_hold_a_stream(
        self, client: httpx.AsyncClient, live_url: str, staff: tuple[TenantHandle, Member, Member]
    ) -> None:
        tenant, admin, _ = staff
        key = await tenant.api_key()
        refused = await watch_socket(live_url, key.key, wait_ready=False)
        await refused.wait_ended()
        assert refused.close_code == CLOSE_FORBIDDEN
        async with httpx.AsyncClient(base_url=live_url, timeout=10) as http:
            assert (await http.get("/api/v1/events", headers=key.headers)).status_code == 403
            assert (await client.delete(f"/api/v1/api-keys/{key.id}", headers=admin.headers)).status_code == 204
            assert (await http.get("/api/v1/events", headers=key.headers)).status_code == 401

    async def test_a_stream_acting_for_an_api_key_ends_when_the_key_is_revoked(
        self, app: FastAPI, client: httpx.AsyncClient, staff: tuple[TenantHandle, Member, Member]
    ) -> None:
        """No endpoint hands a key a stream today; the hub still watches the key of any principal that
        carries one (a key acting for a member), so one added later cannot outlive its revocation."""
        tenant, admin, agent = staff
        key = await tenant.api_key()
        state = app.state.papo
        principal = Principal(tenant.id, agent.user_id, "service", key.id)
        subscriber = state.hub.subscribe(principal, "websocket")
        try:
            stream = event_stream(state, subscriber, None)
            assert (await anext(stream))["type"] == "ready"
            assert (await client.delete(f"/api/v1/api-keys/{key.id}", headers=admin.headers)).status_code == 204
            with pytest.raises(StreamEnded) as ended:
                await asyncio.wait_for(drain(stream), 10)
            assert ended.value.code == CLOSE_UNAUTHORIZED
            assert "API key" in ended.value.reason
        finally:
            state.hub.unsubscribe(subscriber)


class TestExpiry:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    async def test_a_token_that_expires_closes_the_stream(
        self, transport: str, live_url: str, make_tenant: Any, settings: Settings
    ) -> None:
        member = await (await make_tenant()).member()
        async with bearer_stream(transport, live_url, short_token(settings, member, 2)) as stream:
            await stream.wait_ended(2 + settings.auth_leeway_seconds + 10)
            assert_closed(stream, CLOSE_UNAUTHORIZED, "expired")

    async def test_a_refreshed_token_keeps_the_socket_open_past_the_first_expiry(
        self, live_url: str, make_tenant: Any, settings: Settings
    ) -> None:
        member = await (await make_tenant()).member()
        stream = await watch_socket(live_url, short_token(settings, member, 2))
        try:
            await stream.socket.send(json.dumps({"type": "auth", "token": member.token}))
            await stream.wait_for(lambda s: s.messages[-1] == {"type": "auth_ok"})
            await asyncio.sleep(2 + settings.auth_leeway_seconds + 1.5)
            await stream.socket.send(json.dumps({"type": "ping"}))
            await stream.wait_for(lambda s: s.messages[-1] == {"type": "pong"})
        finally:
            await stream.stop()


class TestLimits:
    async def test_streams_per_user_are_capped(self, live_url: str, make_tenant: Any, settings: Settings) -> None:
        tenant: TenantHandle = await make_tenant("Cap")
        member, neighbour = await tenant.member(), await tenant.member()
        cap = settings.realtime_max_streams_per_user
        assert cap > 0
        open_streams = [await watch_socket(live_url, member.token) for _ in range(cap - 1)]
        async with httpx.AsyncClient(base_url=live_url, timeout=30) as http:
            open_streams.append(await watch_sse(http, headers=member.headers))
            try:
                refused = await watch_socket(live_url, member.token, wait_ready=False)
                await refused.wait_ended()
                assert refused.close_code == CLOSE_TOO_MANY
                assert "too many open streams" in refused.error
                over = await http.get("/api/v1/events", headers=member.headers)
                assert over.status_code == 429
                assert over.headers["content-type"] == "application/problem+json"
                assert "too many open streams" in over.json()["detail"]
                # Someone else is not affected, and closing one stream makes room again.
                other = await watch_socket(live_url, neighbour.token)
                await other.stop()
                await open_streams.pop().stop()
                async with asyncio.timeout(10):
                    while True:
                        again = await watch_socket(live_url, member.token, wait_ready=False)
                        await either(again.ready, again.ended)
                        if again.ready.is_set():
                            break
                        await asyncio.sleep(0.05)
                open_streams.append(again)
            finally:
                for stream in open_streams:
                    await stream.stop()

    async def test_flooding_auth_frames_closes_the_socket(
        self, live_url: str, make_tenant: Any, settings: Settings
    ) -> None:
        member = await (await make_tenant()).member()
        limit = settings.realtime_auth_frames_per_minute
        assert limit > 0
        stream = await watch_socket(live_url, member.token)
        try:
            for _ in range(limit):
                await stream.socket.send(json.dumps({"type": "auth", "token": member.token}))
            await stream.wait_for(lambda s: sum(m == {"type": "auth_ok"} for m in s.messages) == limit)
            for _ in range(limit):  # garbage tokens count too: each costs the server a verification
                with contextlib.suppress(websockets.ConnectionClosed):
                    await stream.socket.send(json.dumps({"type": "auth", "token": "forged.token.value"}))
            await stream.wait_ended()
            assert stream.close_code == CLOSE_TOO_MANY
            assert "auth frames" in stream.error
        finally:
            await stream.stop()


async def test_a_change_made_through_one_process_closes_a_stream_held_by_another(
    two_servers: tuple[str, str, asyncio.subprocess.Process],
    staff: tuple[TenantHandle, Member, Member],
) -> None:
    url_a, url_b, _ = two_servers
    tenant, admin, agent = staff
    member = await tenant.member()
    browser = await signed_in_browser(url_a, member)
    try:
        async with bearer_stream("websocket", url_a, agent.token) as socket_on_a:
            cookie_sse_on_a = await watch_sse(browser)
            async with httpx.AsyncClient(base_url=url_b, timeout=30) as via_b:
                demoted = await via_b.patch(
                    f"/api/v1/members/{agent.user_id}", json={"role": "member"}, headers=admin.headers
                )
                assert demoted.status_code == 204
                await socket_on_a.wait_ended()
                assert_closed(socket_on_a, CLOSE_FORBIDDEN, "your role")
                phone = await signed_in_browser(url_b, member)
                try:
                    out = await phone.post(
                        "/logout", data={"csrf_token": await csrf_token(phone), "everywhere": "true"}
                    )
                    assert out.status_code == 303
                finally:
                    await phone.aclose()
                await cookie_sse_on_a.wait_ended()
                assert_closed(cookie_sse_on_a, CLOSE_UNAUTHORIZED, "signed out")
                await cookie_sse_on_a.stop()
    finally:
        await browser.aclose()
