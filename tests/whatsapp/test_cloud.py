"""The WhatsApp Cloud API: Meta's handshake, signed webhook deliveries shaped like Meta's documented
examples posted to the running app, and replies through a fake Graph API over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from papo.auth.models import Role
from papo.db.engine import RlsContext, driver
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN, FakeGraphApi, Member, TenantHandle, wait_status
from tests.support import WHATSAPP_SESSIONS as BASE

HOOK = "/api/v1/whatsapp/webhook"
INBOX = "/api/v1/whatsapp/conversations"


def signed(body: bytes, secret: str = WHATSAPP_APP_SECRET) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def delivery(phone_number_id: str, *, messages: list[dict[str, Any]] = (), statuses: list[dict[str, Any]] = (),
             contacts: list[dict[str, Any]] = ()) -> bytes:  # fmt: skip
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "5511400000000", "phone_number_id": phone_number_id},
    }
    if contacts:
        value["contacts"] = list(contacts)
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(payload).encode()


async def worked_off(database: ProvisionedDatabase) -> None:
    """Wait until every queued webhook delivery has been processed (dead letters wait for the operator)."""
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        async with asyncio.timeout(10):
            while True:
                if await owner.fetchval("SELECT count(*) FROM whatsapp_webhook_deliveries WHERE dead_at IS NULL") == 0:
                    return
                await asyncio.sleep(0.05)
    finally:
        await owner.close()


def text_message(wamid: str, sender: str, body: str) -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": "1760000000", "text": {"body": body}, "type": "text"}


@pytest.fixture
async def cloud_number(client: httpx.AsyncClient, make_tenant: Any) -> tuple[TenantHandle, Member, str, str]:
    tenant: TenantHandle = await make_tenant("Cloud")
    admin = await tenant.member(Role.admin)
    phone_number_id = str(secrets.randbelow(10**15))
    created = await client.post(
        BASE,
        json={
            "name": "oficial",
            "transport": "cloud",
            "config": {"phone_number_id": phone_number_id, "access_token": FakeGraphApi.access_token},
        },
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    await wait_status(client, admin, created.json()["id"], "WORKING")
    return tenant, admin, created.json()["id"], phone_number_id


async def test_meta_handshake(client: httpx.AsyncClient) -> None:
    ok = await client.get(
        HOOK, params={"hub.mode": "subscribe", "hub.verify_token": WHATSAPP_VERIFY_TOKEN, "hub.challenge": "1158201444"}
    )
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    wrong = await client.get(HOOK, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"})
    assert wrong.status_code == 403


async def test_signed_deliveries_stored_once_replies_and_receipts(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
) -> None:
    tenant, admin, session_id, number = cloud_number
    details = (await client.get(f"{BASE}/{session_id}/details", headers=admin.headers)).json()
    assert details["phone_number"] == "+55 11 4000-0000"
    assert details["config"]["has_access_token"] is True
    assert FakeGraphApi.access_token not in json.dumps(details)

    body = delivery(
        number,
        contacts=[{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551234"}],
        messages=[
            text_message("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", "16315551234", "Oi!"),
            {"from": "16315551234", "id": "wamid.image1", "timestamp": "1760000001", "type": "image",
             "image": {"caption": "meu comprovante", "mime_type": "image/jpeg", "id": "2754859441498128"}},
        ],
    )  # fmt: skip
    for _ in range(2):  # Meta delivers again: the second time changes nothing
        answer = await client.post(HOOK, content=body, headers=signed(body))
        assert answer.status_code == 200
        assert answer.json() == {"received": 1}
    await worked_off(database)
    conversations = (await client.get(INBOX, headers=admin.headers)).json()
    assert [c["contact_name"] for c in conversations] == ["Kerry Fisher"]
    conversation_id = conversations[0]["id"]
    messages = (await client.get(f"{INBOX}/{conversation_id}/messages", headers=admin.headers)).json()
    assert [m["content"] for m in messages] == ["Oi!", "meu comprovante"]  # the photo's caption
    assert [a["kind"] for a in messages[1]["attachments"]] == ["image"]

    sent = await client.post(
        f"{INBOX}/{conversation_id}/messages", json={"content": "Olá Kerry!"}, headers=admin.headers
    )
    assert sent.status_code == 201
    assert graph_api.sent[-1]["path"] == f"/v21.0/{number}/messages"
    assert graph_api.sent[-1]["to"] == "16315551234"
    assert graph_api.sent[-1]["text"] == {"body": "Olá Kerry!"}
    reply = (await client.get(f"{INBOX}/{conversation_id}/messages", headers=admin.headers)).json()[-1]
    assert reply["delivery_status"] == "sent"
    wamid = reply["external_id"]
    assert wamid.startswith("wamid.graph-")

    for status in ("read", "delivered", "sent"):  # out of order: read wins
        receipt = delivery(number, statuses=[{"id": wamid, "status": status, "timestamp": "1760000100",
                                              "recipient_id": "16315551234"}])  # fmt: skip
        assert (await client.post(HOOK, content=receipt, headers=signed(receipt))).status_code == 200
        await worked_off(database)  # one at a time: really out of order
    reply = (await client.get(f"{INBOX}/{conversation_id}/messages", headers=admin.headers)).json()[-1]
    assert reply["delivery_status"] == "read"

    async with tenant.db.transaction(RlsContext(tenant.id, None, "service")) as session:
        await driver(session).execute(
            "UPDATE chat_sessions SET last_inbound_at = now() - interval '25 hours' WHERE tenant_id = $1 AND id = $2",
            tenant.id,
            uuid.UUID(conversation_id),
        )
    late = await client.post(
        f"{INBOX}/{conversation_id}/messages", json={"content": "ainda aí?"}, headers=admin.headers
    )
    assert late.status_code == 409
    assert "24-hour" in late.json()["detail"]


async def test_bad_deliveries_store_nothing(
    client: httpx.AsyncClient, cloud_number: tuple[TenantHandle, Member, str, str], database: ProvisionedDatabase
) -> None:
    _, admin, _, number = cloud_number
    body = delivery(number, messages=[text_message("wamid.forged", "5511900000000", "forged")])
    assert (await client.post(HOOK, content=body, headers={"Content-Type": "application/json"})).status_code == 401
    forged = await client.post(HOOK, content=body, headers=signed(body, secret="not-the-secret"))
    assert forged.status_code == 401
    tampered = body.replace(b"forged", b"FORGED")
    assert (await client.post(HOOK, content=tampered, headers=signed(body))).status_code == 401
    await worked_off(database)
    assert (await client.get(INBOX, headers=admin.headers)).json() == []

    broken = b'{"entry": [oops'
    assert (await client.post(HOOK, content=broken, headers=signed(broken))).status_code == 400
    not_meta = b'{"hello": "world"}'
    assert (await client.post(HOOK, content=not_meta, headers=signed(not_meta))).status_code == 400
    stranger = delivery("999", messages=[text_message("wamid.x", "5511900000000", "oi")])
    unknown = await client.post(HOOK, content=stranger, headers=signed(stranger))
    assert unknown.status_code == 200  # Meta would retry anything else for days (see test_ownership)
    assert unknown.json() == {"received": 0}
    await worked_off(database)
    assert (await client.get(INBOX, headers=admin.headers)).json() == []


async def test_a_rejected_token_fails_the_session_with_the_reason(client: httpx.AsyncClient, make_tenant: Any) -> None:
    admin = await (await make_tenant("Token")).member(Role.admin)
    created = await client.post(
        BASE,
        json={"name": "x", "transport": "cloud", "config": {"phone_number_id": "42", "access_token": "expired"}},
        headers=admin.headers,
    )
    failed = await wait_status(client, admin, created.json()["id"], "FAILED")
    assert "Invalid OAuth access token" in failed["status_reason"]
