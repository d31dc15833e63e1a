"""neonize, built offline against its real store: its event handlers are mapped by name onto papo's
state machine, a session creates its real SQLite store, and with no network it fails with the reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import secrets
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from neonize.aioze import events as neonize_events
from neonize.events import EVENT_TO_INT
from neonize.proto.Neonize_pb2 import UploadResponse
from neonize.utils.enum import MediaType
from sqlalchemy import text

from papo.app import app_state_of
from papo.auth.models import Role
from papo.whatsapp.rows import service_principal
from papo.whatsapp.transports.base import InboundMessage, MediaRefused, MediaUnavailable, OutgoingMedia, SessionKey
from papo.whatsapp.transports.neonize import EVENT_MAP, NeonizeTransport
from papo.whatsapp.transports.neonize_media import MEDIA_FIELDS, stored_message
from tests.support import WHATSAPP_SESSIONS as BASE
from tests.whatsapp.test_cloud import INBOX


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


def media_event(wamid: str, build: Any) -> Any:
    event = neonize_events.MessageEv()
    event.Info.ID = wamid
    event.Info.Pushname = "Rita"
    event.Info.MessageSource.Sender.User = SENDER
    build(event.Message)
    return event


SENDER = "5511977778888"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + secrets.token_bytes(300_000)
VCARD = (
    "BEGIN:VCARD\nVERSION:3.0\nFN:Bruno Lima\nitem1.TEL;waid=5511977776666:+55 11 97777-6666\n"
    "EMAIL;TYPE=work:bruno@example.com\nEND:VCARD"
)


def photo(message: Any) -> None:
    part = message.imageMessage
    part.mimetype, part.caption, part.fileLength = "image/jpeg", "meu comprovante", len(JPEG)
    part.directPath, part.mediaKey = "/v/t62.7118-24/abc?ccb=11-4", b"k" * 32
    part.fileSHA256 = hashlib.sha256(JPEG).digest()
    part.JPEGThumbnail = b"thumb" * 1000
    part.URL = "http://169.254.169.254/latest/meta-data"  # the sender writes this field


def voice(message: Any) -> None:
    part = message.ephemeralMessage.message.audioMessage  # a disappearing voice note
    part.mimetype, part.PTT, part.fileLength, part.directPath = "audio/ogg; codecs=opus", True, 4000, "/v/voice"


def pdf(message: Any) -> None:
    part = message.documentWithCaptionMessage.message.documentMessage
    part.mimetype, part.fileName, part.caption, part.fileLength = "application/pdf", "boleto.pdf", "segue", 2000


def where(message: Any) -> None:
    part = message.locationMessage
    part.degreesLatitude, part.degreesLongitude, part.name, part.address = -23.5505, -46.6333, "Loja", "Praça da Sé"


def card(message: Any) -> None:
    contact = message.contactsArrayMessage.contacts.add()
    contact.displayName, contact.vcard = "Bruno", VCARD


async def parsed(*events: Any) -> list[InboundMessage]:
    transport = NeonizeTransport(Path(tempfile.mkdtemp()))
    recorder = Recorder()
    client = transport.build(SessionKey(uuid.uuid4(), uuid.uuid4()), recorder)  # type: ignore[arg-type]
    for event in events:
        await client.event.list_func[EVENT_TO_INT[neonize_events.MessageEv]](client, event)
    return [args[0] for name, args in recorder.calls if name == "message"]


async def test_neonize_media_location_and_contacts_become_attachments() -> None:
    image, note, document, location, contacts = await parsed(
        media_event("P", photo), media_event("V", voice), media_event("D", pdf),
        media_event("L", where), media_event("C", card),
    )  # fmt: skip
    assert (image.kind, image.text) == ("image", "meu comprovante")
    (part,) = image.attachments
    assert (part.kind, part.mime_type, part.size, part.caption) == ("image", "image/jpeg", len(JPEG), "meu comprovante")
    assert part.sha256 == hashlib.sha256(JPEG).hexdigest()
    kept = stored_message(part.source)
    assert kept.imageMessage.directPath == "/v/t62.7118-24/abc?ccb=11-4"  # what the download needs is kept
    assert kept.imageMessage.mediaKey == b"k" * 32
    assert kept.imageMessage.JPEGThumbnail == b""  # the thumbnail is not
    assert kept.imageMessage.URL == ""  # nor a URL: the file comes from WhatsApp's hosts by its path
    assert (note.kind, note.attachments[0].kind, note.attachments[0].size) == ("audio", "voice", 4000)
    assert (document.text, document.attachments[0].file_name) == ("segue", "boleto.pdf")
    assert location.attachments[0].data == {
        "latitude": -23.5505, "longitude": -46.6333, "name": "Loja", "address": "Praça da Sé"
    }  # fmt: skip
    assert contacts.attachments[0].data == {
        "cards": [{"name": "Bruno", "phones": [{"phone": "+55 11 97777-6666", "wa_id": "5511977776666", "type": None}],
                   "emails": ["bruno@example.com"]}]
    }  # fmt: skip
    assert stored_message({"neonize": "not base64!"}) is None
    assert stored_message({"neonize": base64.b64encode(b"\x0a\x03abc").decode()}) is None  # text, not media


class FakeDevice:
    """The outer edge of a paired device: neonize's client calls that reach WhatsApp's servers."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files  # directPath -> decrypted content
        self.sent: list[tuple[Any, Any]] = []
        self.uploads: list[tuple[bytes, Any]] = []

    async def download_any(self, message: Any) -> bytes:
        part = next(getattr(message, f) for f in MEDIA_FIELDS if message.HasField(f))
        return self.files[part.directPath]

    async def upload(self, binary: bytes, media_type: Any) -> Any:
        self.uploads.append((binary, media_type))
        return UploadResponse(
            url="https://mmg.whatsapp.net/x", DirectPath="/v/up", MediaKey=b"m" * 32,
            FileEncSHA256=b"e" * 32, FileSHA256=hashlib.sha256(binary).digest(), FileLength=len(binary),
        )  # fmt: skip

    async def send_message(self, to: Any, message: Any) -> Any:
        self.sent.append((to, message))
        return SimpleNamespace(ID=f"3EB0{len(self.sent)}")


async def test_a_neonize_photo_is_downloaded_by_its_device_and_served(
    client: httpx.AsyncClient, make_tenant: Any, app: FastAPI
) -> None:
    tenant = await make_tenant("Neonize media")
    admin = await tenant.member(Role.admin)
    created = await client.post(
        BASE, json={"name": "loja", "transport": "neonize", "assistant_id": None}, headers=admin.headers
    )
    assert created.status_code == 201
    key = SessionKey(tenant.id, uuid.UUID(created.json()["id"]))
    state = app_state_of(app)
    transport = state.whatsapp.transports["neonize"]
    (inbound,) = await parsed(media_event("3EB0PHOTO", photo))
    await state.whatsapp.receive(key, inbound)  # the real device here is offline: the download waits
    async with asyncio.timeout(15):
        while True:
            (message,) = (await client.get(f"{INBOX}/{await conversation_id(client, admin)}/messages",
                                           headers=admin.headers)).json()  # fmt: skip
            if message["attachments"][0]["error"]:
                break
            await asyncio.sleep(0.1)
    assert message["attachments"][0]["error"].startswith("media unavailable: ")  # neonize's own refusal
    assert message["attachments"][0]["state"] == "pending"  # tried again later, not lost

    offline = transport.clients[key]
    transport.clients[key] = FakeDevice({"/v/t62.7118-24/abc?ccb=11-4": JPEG})
    try:
        async with state.db.transaction(service_principal(tenant.id).context()) as session:
            await session.execute(text("UPDATE attachments SET next_attempt_at = now()"))
        state.media.wake()
        async with asyncio.timeout(15):
            while True:
                (message,) = (await client.get(f"{INBOX}/{await conversation_id(client, admin)}/messages",
                                               headers=admin.headers)).json()  # fmt: skip
                if message["attachments"][0]["state"] != "pending":
                    break
                await asyncio.sleep(0.1)
    finally:
        transport.clients[key] = offline
    photo_part = message["attachments"][0]
    assert (photo_part["state"], photo_part["size"], photo_part["mime_type"]) == ("stored", len(JPEG), "image/jpeg")
    served = await client.get(photo_part["url"], headers=admin.headers)
    assert served.content == JPEG
    other = await (await make_tenant("Other")).member(Role.admin)
    assert (await client.get(photo_part["url"], headers=other.headers)).status_code == 404


async def conversation_id(client: httpx.AsyncClient, admin: Any) -> str:
    (conversation,) = (await client.get(INBOX, headers=admin.headers)).json()
    return str(conversation["id"])


async def test_neonize_sends_a_file_through_its_device(tmp_path: Any) -> None:
    transport = NeonizeTransport(tmp_path)
    key = SessionKey(uuid.uuid4(), uuid.uuid4())
    media = OutgoingMedia("document", "application/pdf", "contrato.pdf", "assine", io.BytesIO(b"%PDF-1.7 ..."))
    with pytest.raises(MediaUnavailable):
        await transport.send_media(key, {}, SENDER, media)  # no device in this process
    device = FakeDevice({})
    transport.clients[key] = device
    sent_id = await transport.send_media(key, {}, SENDER, media)
    assert sent_id == "3EB01"
    (uploaded, media_type), ((to, message),) = device.uploads[0], device.sent
    assert (uploaded, media_type) == (b"%PDF-1.7 ...", MediaType.MediaDocument)
    assert to.User == SENDER
    document = message.documentMessage
    assert (document.fileName, document.caption, document.mimetype) == ("contrato.pdf", "assine", "application/pdf")
    assert (document.directPath, document.mediaKey, document.fileLength) == ("/v/up", b"m" * 32, 12)
    voice_note = OutgoingMedia("audio", "audio/ogg", None, "ignored", io.BytesIO(b"OggS..."))
    await transport.send_media(key, {}, SENDER, voice_note)
    assert device.sent[1][1].audioMessage.PTT is True


async def test_status_posts_and_media_of_unknown_size_are_not_fetched(tmp_path: Any) -> None:
    status_post = media_event("S", photo)
    status_post.Info.MessageSource.Chat.Server = "broadcast"  # a contact's status, not a message to us
    assert await parsed(status_post) == []
    transport = NeonizeTransport(tmp_path)
    key = SessionKey(uuid.uuid4(), uuid.uuid4())
    transport.clients[key] = FakeDevice({"/v/voice": b"OggS"})
    (note,) = await parsed(media_event("V", voice))
    sizeless = stored_message(note.attachments[0].source)
    sizeless.audioMessage.fileLength = 0
    source = {"neonize": base64.b64encode(sizeless.SerializeToString()).decode()}
    with pytest.raises(MediaRefused, match="did not say how large"):
        async with transport.open_media(key, {}, source):
            pass  # pragma: no cover - refused before
    transport.clients[key] = FakeDevice({"/v/voice": b"OggS" * 2000})  # 8000 bytes where 4000 were declared
    async with transport.open_media(key, {}, note.attachments[0].source) as media:
        with pytest.raises(MediaRefused, match="larger than WhatsApp said"):
            _ = [chunk async for chunk in media.chunks]
