"""Outbound webhooks: subscriptions, Standard Webhooks signatures, retries with backoff, the delivery
log, replay, giving up after the window, and what leaves (no member's text)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from papo.auth.models import Role
from papo.errors import InvalidInput
from papo.netguard import NetGuard, Policy
from papo.realtime.service import Event
from papo.webhooks.service import check_target, payload_for
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, WebhookReceiver, create_session, send

HOOKS = "/api/v1/webhooks"


async def subscribe(client: httpx.AsyncClient, admin: Member, url: str, *types: str) -> dict[str, Any]:
    created = await client.post(HOOKS, json={"url": url, "event_types": list(types)}, headers=admin.headers)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def log_of(client: httpx.AsyncClient, admin: Member, hook_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"{HOOKS}/{hook_id}/deliveries", headers=admin.headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def settled_log(client: httpx.AsyncClient, admin: Member, hook_id: str, count: int) -> list[dict[str, Any]]:
    for _ in range(250):
        rows = await log_of(client, admin, hook_id)
        if len(rows) >= count and all(r["status"] != "pending" for r in rows):
            return rows
        await asyncio.sleep(0.04)
    raise AssertionError(f"deliveries did not settle: {rows}")


async def test_signed_deliveries_without_member_text(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Hooks")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    receiver = WebhookReceiver()
    hook = await subscribe(client, admin, f"{receiver.url}/papo?token=abc", "session.created", "message.created")
    assert hook["secret"].startswith("whsec_")
    assert "secret" not in (await client.get(f"{HOOKS}/{hook['id']}", headers=admin.headers)).json()

    chat = await create_session(client, member, "salary negotiation")
    await send(client, member, chat["id"], "my salary is 9000")
    received = await receiver.wait_for(2)
    verifier = Webhook(hook["secret"])
    for delivery in received:
        verifier.verify(delivery.body, delivery.headers)  # raises on a bad signature or a stale time
        assert delivery.path == "/papo?token=abc"
    types = [d.json()["type"] for d in received]
    assert types == ["session.created", "message.created"]
    message = received[1].json()["data"]
    assert message["session_id"] == chat["id"] and message["role"] == "user"
    assert "content" not in message and "9000" not in received[1].body.decode()
    assert "title" not in received[0].json()["data"]
    tampered = received[1].body.replace(b"user", b"xser")
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered, received[1].headers)

    rows = await settled_log(client, admin, hook["id"], 2)
    assert [(r["event_type"], r["status"], r["attempts"], r["last_status_code"]) for r in rows] == [
        ("message.created", "delivered", 1, 204),
        ("session.created", "delivered", 1, 204),
    ]
    # members and other companies see none of it
    assert (await client.get(HOOKS, headers=member.headers)).status_code == 403
    stranger = await (await make_tenant("Else")).member(Role.admin)
    assert (await client.get(f"{HOOKS}/{hook['id']}", headers=stranger.headers)).status_code == 404
    assert (await client.get(f"{HOOKS}/{hook['id']}/deliveries", headers=stranger.headers)).status_code == 404
    replay = await client.post(f"{HOOKS}/{hook['id']}/deliveries/{rows[0]['id']}/replay", headers=stranger.headers)
    assert replay.status_code == 404


async def test_retries_with_backoff_then_replay(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Retry")
    admin = await tenant.member(Role.admin)
    receiver = WebhookReceiver()
    receiver.answers = [500, 503]
    hook = await subscribe(client, admin, receiver.url, "session.created")
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=admin.headers)
    received = await receiver.wait_for(3)
    assert {r.headers["webhook-id"] for r in received} == {received[0].headers["webhook-id"]}  # one delivery
    assert received[0].json()["type"] == "webhook.test"
    gaps = [
        int(later.headers["webhook-timestamp"]) - int(earlier.headers["webhook-timestamp"])
        for earlier, later in itertools.pairwise(received)
    ]
    assert all(gap >= 0 for gap in gaps)
    (row,) = await settled_log(client, admin, hook["id"], 1)
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == ("delivered", 3, 204, None)

    replayed = await client.post(f"{HOOKS}/{hook['id']}/deliveries/{row['id']}/replay", headers=admin.headers)
    assert replayed.status_code == 202
    assert replayed.json()["replay_of"] == row["id"]
    again = await receiver.wait_for(4)
    assert again[3].json() == received[0].json()
    assert again[3].headers["webhook-id"] != received[0].headers["webhook-id"]


async def test_gives_up_after_the_window(
    client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    receiver = WebhookReceiver()
    receiver.answers = [500] * 1000
    admin = await (await make_tenant("Down")).member(Role.admin)
    hook = await subscribe(client, admin, receiver.url, "session.created")
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=admin.headers)
    await receiver.wait_for(1)
    # A day goes by (the delivery is older than the window), and the next attempt fails too.
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        await owner.execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours', next_attempt_at = now() "
            "WHERE endpoint_id = $1",
            uuid.UUID(hook["id"]),
        )
    finally:
        await owner.close()
    (row,) = await settled_log(client, admin, hook["id"], 1)
    assert row["status"] == "failed"
    assert row["attempts"] >= 2
    assert row["last_error"].startswith("HTTP 500")
    attempts = len(receiver.received)
    await asyncio.sleep(0.5)
    assert len(receiver.received) == attempts  # given up: no more attempts


async def test_bad_subscriptions_are_refused(client: httpx.AsyncClient, make_tenant: Any) -> None:
    admin = await (await make_tenant()).member(Role.admin)
    for body in (
        {"url": "ftp://example.com/x", "event_types": ["message.created"]},
        {"url": "https://example.com/x", "event_types": ["message.exploded"]},
        {"url": "https://user:pw@example.com/x", "event_types": ["message.created"]},
        {"url": "https://example.com/x", "event_types": []},
        {"url": "https://example.com/x"},
    ):
        response = await client.post(HOOKS, json=body, headers=admin.headers)
        assert response.status_code == 422, (body, response.text)
    assert (await client.get(HOOKS, headers=admin.headers)).json() == []
    missing = await client.post(f"{HOOKS}/{uuid.uuid4()}/deliveries/{2**63}/replay", headers=admin.headers)
    assert missing.status_code == 422


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:5432/", "http://localhost/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/"],
)
async def test_private_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        await check_target(url, NetGuard(Policy()))
    assert refused.value.detail.startswith("address not allowed")


def test_staff_conversations_travel_in_full() -> None:
    tenant = uuid.uuid4()
    data = {"id": "m1", "session_id": "s1", "role": "user", "content": "Olá", "channel": "whatsapp"}
    assert payload_for(Event(7, tenant, "staff", None, "message.created", data))["data"]["content"] == "Olá"
    assert "content" not in payload_for(Event(8, tenant, "user", "u1", "message.created", data))["data"]
