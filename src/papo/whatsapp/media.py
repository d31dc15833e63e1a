"""Customers' media, fetched off the request path: photos, voice notes, videos, documents, stickers.

A message with media is stored at once with its attachment `pending`; this worker (any process)
claims due downloads, streams each from the number's transport into the blob store, and marks it
`stored`, announcing the change to the company's staff. What WhatsApp sends is checked on the way:
the size against the operator's limit and the tenant's quota, the bytes against the type WhatsApp
claims (by their signature), an empty file refused. A download that fails keeps the message (its
attachment says "media unavailable" and when it will try again) and is retried with doubling
pauses; out of attempts, the attachment is `unavailable` for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import puremagic
import structlog
from fastapi import UploadFile

from papo.blobs import BlobStore, BlobTooLarge, WrittenBlob
from papo.chat.attachments import (
    Attachments,
    NewAttachment,
    StoredFile,
    blob_key,
    claim_downloads,
    safe_file_name,
    upload_head,
    write_upload,
)
from papo.chat.channel import ChannelConversations
from papo.chat.models import Attachment
from papo.db.engine import Database
from papo.errors import NotFound, UnsupportedFile
from papo.settings import Settings
from papo.sizes import file_size
from papo.waiting import work_when_woken
from papo.whatsapp.hub import WhatsappHub
from papo.whatsapp.inbox import VOICE_KINDS
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.rows import service_principal
from papo.whatsapp.transports.base import MediaRefused, SessionKey

log = structlog.get_logger(__name__)
DOWNLOADS_PER_BATCH = 20
PARALLEL_DOWNLOADS = 4
MAX_RETRY_SECONDS = 3600.0
# Types whose bytes have no signature to check (text formats): taken as WhatsApp states them.
UNSIGNED_TYPES = ("text/", "application/json", "application/xml")


class Refused(Exception):
    """The file arrived but is not kept (the reason is shown with the message)."""


def claimed_type(declared: str | None) -> str:
    return (declared or "application/octet-stream").split(";")[0].strip().lower()


def check_content(declared: str, head: bytes) -> str:
    """The type to serve the file as: WhatsApp's claim when the bytes agree (or cannot tell)."""
    if declared.startswith(UNSIGNED_TYPES):
        return declared
    try:
        guesses = {match.mime_type for match in puremagic.magic_string(head) if match.mime_type}
    except puremagic.PureError:
        guesses = set()
    if declared in guesses:
        return declared
    family = declared.split("/")[0]
    playable = family in ("image", "audio", "video")
    # every image format a browser shows has a signature; some audio and video codecs have none,
    # but none of them starts like markup
    unknown_but_plausible = not guesses and not (family == "image" or head.lstrip()[:1] == b"<")
    # an image must be exactly what it says (an SVG is no PNG); audio and video of the same family will do
    agrees = any(g.startswith(family + "/") for g in guesses) if family != "image" else False
    if playable and not unknown_but_plausible and not agrees:
        raise Refused(f"the file is not the {declared} it claims to be")
    if not guesses or any(g.split("/")[0] == family for g in guesses):
        return declared
    return "application/octet-stream"


@dataclass
class MediaDownloads:
    db: Database
    settings: Settings
    blobs: BlobStore
    hub: WhatsappHub
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.ready.set()

    async def run(self) -> None:
        await work_when_woken(
            self.ready, self.settings.media_poll_seconds, self._batch, name="whatsapp media downloads"
        )

    async def _batch(self) -> int:
        async with self.db.transaction() as session:
            claimed = await claim_downloads(session, DOWNLOADS_PER_BATCH)
        slots = asyncio.Semaphore(PARALLEL_DOWNLOADS)

        async def one(tenant_id: uuid.UUID, attachment_id: uuid.UUID, attempt: int) -> None:
            async with slots:
                await self.download(tenant_id, attachment_id, attempt)

        await asyncio.gather(*(one(*item) for item in claimed))
        return len(claimed)

    async def download(self, tenant_id: uuid.UUID, attachment_id: uuid.UUID, attempt: int) -> None:
        """Fetch one attachment; every outcome is written on it."""
        if attempt > self.settings.media_max_attempts:  # its earlier tries ended with their process
            why = f"given up after {attempt - 1} attempts"
            with contextlib.suppress(NotFound):
                await self._record(tenant_id, lambda store: store.give_up(attachment_id, "unavailable", why))
            return
        principal = service_principal(tenant_id)
        try:
            async with self.db.transaction(principal.context()) as session:
                attachments = Attachments(session, principal)
                row = await attachments.get(attachment_id)
                conversation = await ChannelConversations(session, principal).find(row.session_id)
                number = await session.get(WhatsappSession, (tenant_id, conversation["whatsapp_session_id"]))
                quota_left = (
                    self.settings.media_quota_bytes - await attachments.stored_bytes()
                    if self.settings.media_quota_bytes
                    else None
                )
        except NotFound:
            return  # removed with its message since it was claimed
        try:
            if number is None or not number.is_active:
                raise Refused("the WhatsApp number was removed")
            written, mime_type = await self._fetch(row, number, quota_left)
        except (Refused, MediaRefused) as refused:
            why = str(refused)
            await self._record(tenant_id, lambda store: store.give_up(row.id, "rejected", why))
            return
        except Exception as exc:  # the transport, the network, the store: try again later
            reason = str(exc) or exc.__class__.__name__
            log.warning("whatsapp media download failed", attachment=str(row.id), attempt=attempt, error=reason)
            if attempt >= self.settings.media_max_attempts:
                await self._record(tenant_id, lambda store: store.give_up(row.id, "unavailable", reason))
            else:
                pause = min(self.settings.media_retry_seconds * 2 ** (attempt - 1), MAX_RETRY_SECONDS)
                when = datetime.now(UTC) + timedelta(seconds=pause)
                await self._record(
                    tenant_id, lambda store: store.retry_later(row.id, "media unavailable: " + reason, when)
                )
            return
        key = blob_key(row.tenant_id, row.id)
        stored = await self._record(
            tenant_id,
            lambda store: store.mark_stored(
                row.id, key=key, size=written.size, sha256=written.sha256, mime_type=mime_type
            ),
        )
        if isinstance(stored, Attachment) and stored.kind in VOICE_KINDS:
            self.hub.later(self.hub.voice_note_stored(tenant_id, stored), "transcription")

    async def _fetch(self, row: Attachment, number: WhatsappSession, quota_left: int | None) -> tuple[WrittenBlob, str]:
        limit = self.settings.media_max_bytes
        if quota_left is not None:
            if quota_left <= 0:
                raise Refused("the company's media storage is full")
            limit = min(limit, quota_left)
        key = SessionKey(row.tenant_id, number.id)
        transport = self.hub.transport(number.transport)
        async with transport.open_media(key, self.hub.open_config(dict(number.config)), row.source) as media:
            if media.declared_size is not None and media.declared_size > limit:
                raise Refused(self._too_large(limit))
            try:
                written = await self.blobs.write(blob_key(row.tenant_id, row.id), media.chunks, max_bytes=limit)
            except BlobTooLarge as exc:
                raise Refused(self._too_large(exc.limit)) from exc
        declared = claimed_type(media.mime_type or row.mime_type)
        try:
            if written.size == 0:
                raise Refused("the file is empty")
            return written, check_content(declared, written.head)
        except Refused:
            await self.blobs.delete(blob_key(row.tenant_id, row.id))
            raise

    def _too_large(self, limit: int) -> str:
        if limit < self.settings.media_max_bytes:
            return "the company's media storage is full"
        return f"the file is larger than {file_size(limit)}"

    async def _record(self, tenant_id: uuid.UUID, change: Callable[[Attachments], Awaitable[object]]) -> object:
        principal = service_principal(tenant_id)
        async with self.db.transaction(principal.context()) as session:
            return await change(Attachments(session, principal))


# What WhatsApp takes from a business (Cloud API media limits): kind -> (largest file, its types;
# None: any). A file of another type than its kind allows goes as a document.
OUTBOUND_LIMITS: dict[str, tuple[int, frozenset[str] | None]] = {
    "image": (5 * 1024**2, frozenset({"image/jpeg", "image/png"})),
    "audio": (16 * 1024**2, frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"})),
    "video": (16 * 1024**2, frozenset({"video/mp4", "video/3gpp"})),
    "document": (100 * 1024**2, None),
}


def outbound_kind(mime_type: str) -> str:
    family = mime_type.split("/")[0]
    kind = family if family in ("image", "audio", "video") else "document"
    allowed = OUTBOUND_LIMITS[kind][1]
    return kind if allowed is None or mime_type in allowed else "document"


def sniffed_type(declared: str, head: bytes) -> str:
    """The type a sent file really has: the sender's claim checked against its bytes."""
    if declared == "application/octet-stream":
        with contextlib.suppress(puremagic.PureError):
            for match in puremagic.magic_string(head):
                if match.mime_type:
                    return str(match.mime_type)
    try:
        return check_content(declared, head)
    except Refused as refused:
        raise UnsupportedFile(str(refused)) from refused


async def store_upload(
    blobs: BlobStore,
    settings: Settings,
    attachments: Attachments,
    upload: UploadFile,
    caption: str | None,
) -> StoredFile:
    """An agent's file, checked against WhatsApp's limits and the company's quota, streamed into the
    blob store (nothing is kept when it is refused)."""
    head = await upload_head(upload)
    mime_type = sniffed_type(claimed_type(upload.content_type), head)
    kind = outbound_kind(mime_type)
    # a photo larger than WhatsApp shows as a photo still goes, as a document (its full quality kept)
    sent_as = "document" if kind == "image" else kind
    limit = min(OUTBOUND_LIMITS[sent_as][0], settings.media_max_bytes)
    attachment_id, key, written = await write_upload(
        blobs, settings, attachments, upload, limit, f"WhatsApp takes a {sent_as} of at most"
    )
    if written.size > OUTBOUND_LIMITS[kind][0]:
        kind = sent_as
    name = safe_file_name(upload.filename)
    part = NewAttachment(
        kind, mime_type=mime_type, file_name=name, caption=caption or None, size=written.size, sha256=written.sha256
    )
    return StoredFile(attachment_id, part, key)
