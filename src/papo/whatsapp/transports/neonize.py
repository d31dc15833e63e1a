"""WhatsApp multi-device through neonize (whatsmeow underneath): pairs by QR like WhatsApp Web, with
no browser. Each session keeps its device credentials in its own SQLite store under the transport's
directory, so a restart reconnects without a new scan.

neonize reports events by protobuf type; `EVENT_MAP` names the ones papo listens to and what each
means for the session's state machine (checked against neonize's own event table in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from papo.whatsapp.transports.base import (
    InboundMessage,
    MediaRefused,
    MediaStream,
    MediaUnavailable,
    OutgoingMedia,
    SessionEvents,
    SessionKey,
    Transport,
)
from papo.whatsapp.transports.neonize_media import MEDIA_FIELDS, content_of, outgoing_message, stored_message

log = structlog.get_logger(__name__)

# neonize event class name -> papo's meaning (see status.py)
EVENT_MAP = {
    "PairStatusEv": "paired",
    "ConnectedEv": "connected",
    "DisconnectedEv": "disconnected",
    "KeepAliveTimeoutEv": "disconnected",
    "LoggedOutEv": "logged_out",
    "StreamReplacedEv": "failed",
    "ConnectFailureEv": "failed",
    "TemporaryBanEv": "failed",
    "ClientOutdatedEv": "failed",
    "MessageEv": "message",
    "ReceiptEv": "receipt",
}
DOWNLOAD_CHUNK = 256 * 1024
NOT_A_CUSTOMER = ("broadcast", "newsletter")  # chat servers of status posts and channels
RECEIPT_STATUS = {1: "delivered", 4: "read", 6: "read"}  # neonize Receipt.Type: DELIVERED, READ, PLAYED


class NeonizeTransport(Transport):
    kind = "neonize"

    def __init__(self, store_dir: Path) -> None:
        super().__init__(store_dir)
        self.clients: dict[SessionKey, Any] = {}
        self.connecting: dict[SessionKey, asyncio.Task[None]] = {}
        # neonize's download call returns the whole file: one at a time bounds what it holds
        self.downloading = asyncio.Semaphore(1)

    def store_path(self, key: SessionKey) -> Path:
        return self.store_dir / f"{key.slug}.sqlite3"

    def has_credentials(self, key: SessionKey) -> bool:
        """A paired device is stored (whatsmeow's device table has a row)."""
        path = self.store_path(key)
        if not path.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return bool(db.execute("SELECT count(*) FROM whatsmeow_device").fetchone()[0])
        except sqlite3.Error:
            return False

    def credentials_problem(self, key: SessionKey) -> str | None:
        """A store that is there must be a sound SQLite database with whatsmeow's tables; one that is
        not (a disk error, a half-copied backup) would make neonize fail in ways that say little."""
        path = self.store_path(key)
        if not path.exists():
            return None  # never paired, or logged out: starting shows a QR code
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    return f"the credentials store is corrupt ({verdict}); remove the session's store and scan again"
                db.execute("SELECT count(*) FROM whatsmeow_device").fetchone()
        except sqlite3.Error as exc:
            return f"the credentials store cannot be read ({exc}); remove the session's store and scan again"
        return None

    def build(self, key: SessionKey, events: SessionEvents) -> Any:
        """A neonize client on the session's store, its events wired to `events` by name."""
        from neonize.aioze import events as neonize_events
        from neonize.aioze.client import NewAClient

        self.store_dir.mkdir(parents=True, exist_ok=True)
        client = NewAClient(str(self.store_path(key)))

        async def on_qr(_: Any, code: bytes) -> None:
            await events.qr(code.decode() if isinstance(code, bytes) else str(code))

        client.event.qr(on_qr)
        for class_name, meaning in EVENT_MAP.items():
            client.event(getattr(neonize_events, class_name))(self._handler(class_name, meaning, events))
        return client

    def _handler(self, class_name: str, meaning: str, events: SessionEvents) -> Any:
        async def handle(_: Any, event: Any) -> None:
            try:
                if meaning == "paired":
                    await events.paired(str(event.ID.User) if event.HasField("ID") else "")
                elif meaning == "connected":
                    await events.connected()
                elif meaning == "disconnected":
                    await events.disconnected(class_name.removesuffix("Ev"))
                elif meaning == "logged_out":
                    await events.logged_out("the device was removed on the phone")
                elif meaning == "failed":
                    await events.failed(f"WhatsApp ended the session: {class_name.removesuffix('Ev')}")
                elif meaning == "message":
                    source = event.Info.MessageSource
                    if source.IsFromMe or source.IsGroup or source.Chat.Server in NOT_A_CUSTOMER:
                        return  # our own, a group's, a contact's status post or a channel's
                    text, kind, attachments = content_of(event.Message)
                    await events.message(
                        InboundMessage(
                            event.Info.ID, source.Sender.User, event.Info.Pushname or None, text, kind, attachments
                        )
                    )
                elif meaning == "receipt":
                    status = RECEIPT_STATUS.get(int(event.Type))
                    if status:
                        for message_id in event.MessageIDs:
                            await events.receipt(str(message_id), status)
            except Exception:
                log.exception("neonize event handling failed", event=class_name)

        return handle

    async def start(self, key: SessionKey, config: dict[str, Any], events: SessionEvents) -> None:
        await self.stop(key)
        client = self.build(key, events)
        self.clients[key] = client
        connecting = await client.connect()

        async def watch() -> None:
            try:
                await connecting
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await events.failed(f"cannot reach WhatsApp: {exc}")

        self.connecting[key] = asyncio.create_task(watch())

    async def stop(self, key: SessionKey) -> None:
        client = self.clients.pop(key, None)
        watcher = self.connecting.pop(key, None)
        if watcher is not None:
            watcher.cancel()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def forget(self, key: SessionKey) -> bool:
        client = self.clients.get(key)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.logout()
        await self.stop(key)
        existed = self.store_path(key).exists()
        self.remove_store(key.slug)
        return existed

    def _client(self, key: SessionKey) -> Any:
        client = self.clients.get(key)
        if client is None:
            raise MediaUnavailable("this WhatsApp number is not connected in this process")
        return client

    async def send_text(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, text: str) -> str:
        from neonize.utils.jid import build_jid

        response = await self._client(key).send_message(build_jid(to_wa_id), text)
        return str(response.ID)

    async def send_media(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, media: OutgoingMedia) -> str:
        """Upload the file through the device's connection (neonize encrypts it), then send the message
        that names it. neonize takes the file as bytes: WhatsApp's own limits (checked before it got
        here) bound them."""
        from neonize.utils.enum import MediaType
        from neonize.utils.jid import build_jid

        client = self._client(key)
        media_type = {
            "image": MediaType.MediaImage,
            "audio": MediaType.MediaAudio,
            "video": MediaType.MediaVideo,
        }.get(media.kind, MediaType.MediaDocument)
        upload = await client.upload(media.content.read(), media_type)
        message = outgoing_message(media.kind, upload, media.mime_type, media.file_name, media.caption)
        response = await client.send_message(build_jid(to_wa_id), message)
        return str(response.ID)

    @asynccontextmanager
    async def open_media(
        self, key: SessionKey, config: dict[str, Any], source: dict[str, Any]
    ) -> AsyncIterator[MediaStream]:
        """neonize's download call, through the device's connection (so only in the process that holds
        it; elsewhere the download is tried again later). It returns the whole file, so it runs only
        when the stream is read: after the declared size was checked against the limits."""
        message = stored_message(source)
        if message is None:
            raise MediaRefused("no WhatsApp media to download")
        part = next(getattr(message, field) for field in MEDIA_FIELDS if message.HasField(field))
        if not part.fileLength:  # the size is what bounds the download: a file of unknown size is not fetched
            raise MediaRefused("WhatsApp did not say how large the file is")
        client = self._client(key)

        async def chunks() -> AsyncIterator[bytes]:
            async with self.downloading:  # one whole file in memory at a time
                content = memoryview(await client.download_any(message))
                if len(content) > part.fileLength:
                    raise MediaRefused("the file is larger than WhatsApp said")
                for start in range(0, len(content), DOWNLOAD_CHUNK):
                    yield bytes(content[start : start + DOWNLOAD_CHUNK])

        yield MediaStream(part.mimetype or None, int(part.fileLength), chunks())
