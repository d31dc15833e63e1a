"""A WhatsApp transport for tests only: shaped like a multi-device client (QR codes, pairing,
stored credentials, disconnects, log-outs), driven by the test instead of a phone.

config keys: "auto_pair": phone number, paired shortly after the first QR (for server processes
the test cannot reach into); "fail_start": raise when starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

from papo.chat.attachments import NewAttachment
from papo.whatsapp.transports.base import InboundMessage, OutgoingMedia, SessionEvents, SessionKey, Transport


class FakeTransport(Transport):
    kind = "fake"

    def __init__(self, store_dir: Any) -> None:
        super().__init__(store_dir)
        self.events: dict[SessionKey, SessionEvents] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.starts: list[SessionKey] = []
        self.sent: list[tuple[SessionKey, str, str, str]] = []  # key, to, text, WhatsApp message id
        self.files: list[tuple[str, str, str | None, bytes]] = []  # kind, mime type, file name, bytes

    def _store(self, key: SessionKey) -> Any:
        return self.store_dir / f"{key.slug}.json"

    def has_credentials(self, key: SessionKey) -> bool:
        return self._store(key).exists()

    def _later(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, key: SessionKey, config: dict[str, Any], events: SessionEvents) -> None:
        if config.get("fail_start"):
            raise RuntimeError("the fake was told to fail")
        self.starts.append(key)
        self.events[key] = events
        if self.has_credentials(key):
            self._later(events.connected())  # stored credentials: no QR this time
            return
        self._later(events.qr("fake-qr-" + secrets.token_hex(8)))
        if phone := config.get("auto_pair"):

            async def pair() -> None:
                await asyncio.sleep(0.2)
                await self.scan(key, str(phone))

            self._later(pair())

    async def stop(self, key: SessionKey) -> None:
        self.events.pop(key, None)

    async def forget(self, key: SessionKey) -> bool:
        self.events.pop(key, None)
        existed = self.has_credentials(key)
        self._store(key).unlink(missing_ok=True)
        return existed

    async def send_text(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, text: str) -> str:
        if config.get("fail_send"):
            raise RuntimeError("the fake network refused to send")
        external_id = "wamid.fake-" + secrets.token_hex(8)
        self.sent.append((key, to_wa_id, text, external_id))
        return external_id

    async def send_media(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, media: OutgoingMedia) -> str:
        external_id = "wamid.fake-" + secrets.token_hex(8)
        self.sent.append((key, to_wa_id, f"[{media.kind}: {media.file_name}] {media.caption or ''}", external_id))
        self.files.append((media.kind, media.mime_type, media.file_name, media.content.read()))
        return external_id

    # ---- what the phone and the network do, driven by tests ----------------------------------

    async def customer_writes(
        self,
        key: SessionKey,
        text: str,
        *,
        wa_id: str,
        name: str | None = None,
        external_id: str | None = None,
        kind: str = "text",
        attachments: tuple[NewAttachment, ...] = (),
    ) -> str:
        external_id = external_id or "wamid.in-" + secrets.token_hex(8)
        await self.events[key].message(InboundMessage(external_id, wa_id, name, text, kind, attachments))
        return external_id

    async def receipt(self, key: SessionKey, external_id: str, status: str) -> None:
        await self.events[key].receipt(external_id, status)

    async def rotate_qr(self, key: SessionKey) -> str:
        code = "fake-qr-" + secrets.token_hex(8)
        await self.events[key].qr(code)
        return code

    async def scan(self, key: SessionKey, phone: str) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._store(key).write_text(json.dumps({"phone": phone}))
        await self.events[key].paired(phone)
        await self.events[key].connected()

    async def drop(self, key: SessionKey, *, come_back: bool = True) -> None:
        await self.events[key].disconnected("connection lost")
        if come_back:
            await self.events[key].connected()

    async def log_out_from_phone(self, key: SessionKey) -> None:
        await self.events[key].logged_out("the device was removed on the phone")

    async def crash(self, key: SessionKey) -> None:
        with contextlib.suppress(KeyError):
            await self.events[key].failed("transport crashed: fake fault")
