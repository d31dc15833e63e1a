"""neonize, built offline against its real store: its event handlers are mapped by name onto papo's
state machine, a session creates its real SQLite store, and with no network it fails with the reason."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from neonize.aioze import events as neonize_events
from neonize.events import EVENT_TO_INT

from papo.auth.models import Role
from papo.whatsapp.transports.base import InboundMessage, SessionKey
from papo.whatsapp.transports.neonize import EVENT_MAP, NeonizeTransport
from tests.support import WHATSAPP_SESSIONS as BASE


class Recorder:
    """SessionEvents that remember what they were told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


def test_every_mapped_event_is_a_neonize_event() -> None:
    for class_name in EVENT_MAP:
        event_class = getattr(neonize_events, class_name)
        assert event_class in EVENT_TO_INT, class_name


async def test_neonize_events_drive_the_state_machine(tmp_path: Any) -> None:
    transport = NeonizeTransport(tmp_path)
    recorder = Recorder()
    client = transport.build(SessionKey(uuid.uuid4(), uuid.uuid4()), recorder)  # type: ignore[arg-type]
    handlers = client.event.list_func

    def fire(class_name: str, event: Any) -> Any:
        return handlers[EVENT_TO_INT[getattr(neonize_events, class_name)]](client, event)

    await fire("ConnectedEv", neonize_events.ConnectedEv())
    message = neonize_events.MessageEv()
    message.Info.ID = "3EB0C767D82B2BA6E1A4"
    message.Info.Pushname = "Rita"
    message.Info.MessageSource.Sender.User = "5511977778888"
    message.Message.conversation = "bom dia"
    await fire("MessageEv", message)
    own = neonize_events.MessageEv()
    own.Info.MessageSource.IsFromMe = True
    await fire("MessageEv", own)  # our own messages are not customers'
    receipt = neonize_events.ReceiptEv()
    receipt.Type = 4  # READ
    receipt.MessageIDs.extend(["ABC", "DEF"])
    await fire("ReceiptEv", receipt)
    await fire("LoggedOutEv", neonize_events.LoggedOutEv())
    await fire("StreamReplacedEv", neonize_events.StreamReplacedEv())
    assert recorder.calls == [
        ("connected", ()),
        ("message", (InboundMessage("3EB0C767D82B2BA6E1A4", "5511977778888", "Rita", "bom dia", "text"),)),
        ("receipt", ("ABC", "read")),
        ("receipt", ("DEF", "read")),
        ("logged_out", ("the device was removed on the phone",)),
        ("failed", ("WhatsApp ended the session: StreamReplaced",)),
    ]


async def test_a_session_opens_its_real_store_and_fails_clearly_offline(
    client: httpx.AsyncClient, make_tenant: Any, app: FastAPI
) -> None:
    tenant = await make_tenant("Neonize")
    admin = await tenant.member(Role.admin)
    created = await client.post(BASE, json={"name": "celular", "transport": "neonize"}, headers=admin.headers)
    assert created.status_code == 201
    sid = created.json()["id"]
    async with asyncio.timeout(30):
        while True:
            row = (await client.get(f"{BASE}/{sid}", headers=admin.headers)).json()
            if row["status"] in ("FAILED", "SCAN_QR_CODE"):
                break
            await asyncio.sleep(0.1)
    transport = app.state.papo.whatsapp.transports["neonize"]
    key = SessionKey(tenant.id, uuid.UUID(sid))
    assert transport.store_path(key).exists()  # whatsmeow's own SQLite store
    assert transport.has_credentials(key) is False  # nothing paired yet
    if row["status"] == "FAILED":  # this machine has no way out to WhatsApp
        assert "cannot reach WhatsApp" in row["status_reason"]
    assert (await client.delete(f"{BASE}/{sid}", headers=admin.headers)).status_code == 204
    assert not transport.store_path(key).exists()
