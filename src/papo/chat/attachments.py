"""Attachments: the files and structured parts of a message (migration 0024), and the only SQL on
`attachments` and `blob_deletions`.

An attachment is visible exactly when its message is (row-level security; see the migration): the
caller's context decides, so reading one another tenant or member may not see is a 404 like its
message. Its bytes live in the blob store under `blob_key(...)`, a name made of papo's own ids."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import UploadFile
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.blobs import HEAD_BYTES, READ_CHUNK, BlobStore, BlobTooLarge, WrittenBlob
from papo.chat.models import Attachment, Message
from papo.db.base import new_id
from papo.db.engine import Database, driver
from papo.errors import FileTooLarge, InvalidInput, NotFound
from papo.realtime.service import emit
from papo.settings import Settings
from papo.sizes import file_size
from papo.waiting import work_when_woken

ATTACHMENT_NOT_FOUND = "attachment not found"
FILE_KINDS = ("image", "audio", "voice", "video", "document", "sticker")
STRUCTURED_KINDS = ("location", "contacts")
BLOB_DELETIONS_PER_BATCH = 200


@dataclass(frozen=True)
class NewAttachment:
    """What a channel received: a file still to download (`source` tells the transport how), or
    structured data (a location, shared contacts) complete as it is."""

    kind: str
    source: dict[str, Any] = field(default_factory=dict)
    mime_type: str | None = None
    file_name: str | None = None
    caption: str | None = None
    size: int | None = None
    sha256: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class StoredFile:
    """A file already written to the blob store under `key`, to attach to a message being stored."""

    attachment_id: uuid.UUID
    part: NewAttachment
    key: str


def blob_key(tenant_id: uuid.UUID, attachment_id: uuid.UUID) -> str:
    return f"media/{tenant_id.hex}/{attachment_id.hex}"


SAFE_FILE_NAME = re.compile(r"[^\w.\- ()]+")


def safe_file_name(name: str | None) -> str | None:
    """An uploaded file's name, kept to characters that are harmless in a header or a page."""
    return SAFE_FILE_NAME.sub("_", name or "").strip()[:200] or None


async def upload_head(upload: UploadFile) -> bytes:
    """The first bytes of an upload (to tell what it is), the upload rewound; 422 when empty."""
    head = await upload.read(HEAD_BYTES)
    await upload.seek(0)
    if not head:
        raise InvalidInput("the file is empty", field="file")
    return head


async def write_upload(
    blobs: BlobStore, settings: Settings, attachments: Attachments, upload: UploadFile, limit: int, too_large: str
) -> tuple[uuid.UUID, str, WrittenBlob]:
    """An upload streamed into the blob store under a new attachment id, within `limit` and what is
    left of the tenant's storage quota (413, with `too_large` or "storage is full"; nothing kept)."""
    quota_left = None
    if settings.media_quota_bytes:
        quota_left = settings.media_quota_bytes - await attachments.stored_bytes()
    attachment_id = new_id()
    key = blob_key(attachments.principal.tenant_id, attachment_id)

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await upload.read(READ_CHUNK):
            yield chunk

    try:
        written = await blobs.write(key, chunks(), max_bytes=limit if quota_left is None else min(limit, quota_left))
    except BlobTooLarge as exc:
        if quota_left is not None and exc.limit == quota_left:
            raise FileTooLarge("the company's media storage is full") from exc
        raise FileTooLarge(f"{too_large} {file_size(limit)}") from exc
    return attachment_id, key, written


def attachment_view(row: Attachment) -> dict[str, Any]:
    """An attachment as the API and events show it (JSON types only); `url` serves its bytes."""
    return {
        "id": str(row.id),
        "message_id": str(row.message_id),
        "kind": row.kind,
        "state": row.state,
        "mime_type": row.mime_type,
        "size": row.size,
        "file_name": row.file_name,
        "caption": row.caption,
        "data": row.data,
        "transcript": row.transcript,
        "error": row.error,
        "url": f"/api/v1/attachments/{row.id}/content" if row.state == "stored" and row.blob_key else None,
    }


class Attachments:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.db = session
        self.principal = principal

    async def _owner(self, message_id: uuid.UUID) -> Any:
        """The message's channel and owner, which its attachments copy (for row-level security)."""
        return (
            await self.db.execute(
                select(Message.channel, Message.user_id).where(
                    Message.tenant_id == self.principal.tenant_id, Message.id == message_id
                )
            )
        ).one()

    def _values(self, message: dict[str, Any], owner: Any, part: NewAttachment) -> dict[str, Any]:
        return {
            "tenant_id": self.principal.tenant_id,
            "message_id": message["id"],
            "session_id": message["session_id"],
            "channel": owner.channel,
            "user_id": owner.user_id,
            "kind": part.kind,
            "source": part.source,
            "mime_type": part.mime_type,
            "file_name": part.file_name,
            "caption": part.caption,
            "size": part.size,
            "sha256": part.sha256,
            "data": part.data,
        }

    async def add(self, message: dict[str, Any], found: list[NewAttachment]) -> list[Attachment]:
        """Attach what a channel received to a message just stored (in its transaction): files to
        fetch are `pending`, structured parts complete."""
        if not found:
            return []
        owner = await self._owner(message["id"])
        rows = [
            self._values(message, owner, part)
            | {"id": new_id(), "state": "stored" if part.kind in STRUCTURED_KINDS else "pending"}
            for part in found
        ]
        created = await self.db.scalars(insert(Attachment).returning(Attachment), rows)
        return list(created)

    async def add_stored(self, message: dict[str, Any], file: StoredFile) -> Attachment:
        """A file already in the blob store (an agent's upload) attached to a message just stored."""
        values = self._values(message, await self._owner(message["id"]), file.part)
        values |= {"id": file.attachment_id, "state": "stored", "blob_key": file.key}
        row: Attachment | None = await self.db.scalar(insert(Attachment).values(**values).returning(Attachment))
        assert row is not None
        return row

    async def for_messages(self, message_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Attachment]]:
        if not message_ids:
            return {}
        found: dict[uuid.UUID, list[Attachment]] = {}
        rows = await self.db.scalars(
            select(Attachment)
            .where(Attachment.tenant_id == self.principal.tenant_id, Attachment.message_id.in_(message_ids))
            .order_by(Attachment.created_at, Attachment.id)
        )
        for row in rows:
            found.setdefault(row.message_id, []).append(row)
        return found

    async def get(self, attachment_id: uuid.UUID) -> Attachment:
        row = await self.db.scalar(
            select(Attachment).where(Attachment.tenant_id == self.principal.tenant_id, Attachment.id == attachment_id)
        )
        if row is None:
            raise NotFound(ATTACHMENT_NOT_FOUND)
        return row

    async def stored_bytes(self) -> int:
        """What this tenant keeps in the blob store (for its quota)."""
        total = await self.db.scalar(
            select(func.coalesce(func.sum(Attachment.size), 0)).where(
                Attachment.tenant_id == self.principal.tenant_id, Attachment.blob_key.is_not(None)
            )
        )
        return int(total or 0)

    async def _change(self, attachment_id: uuid.UUID, **values: Any) -> Attachment:
        row: Attachment | None = await self.db.scalar(
            update(Attachment)
            .where(Attachment.tenant_id == self.principal.tenant_id, Attachment.id == attachment_id)
            .values(updated_at=func.now(), claimed_at=None, **values)
            .returning(Attachment)
        )
        if row is None:
            raise NotFound(ATTACHMENT_NOT_FOUND)
        self._announce(row)
        return row

    async def mark_stored(
        self, attachment_id: uuid.UUID, *, key: str, size: int, sha256: str, mime_type: str
    ) -> Attachment:
        return await self._change(
            attachment_id, state="stored", blob_key=key, size=size, sha256=sha256, mime_type=mime_type, error=None
        )

    async def retry_later(self, attachment_id: uuid.UUID, error: str, when: datetime) -> Attachment:
        """The download failed for now: the message says so, and another attempt comes at `when`."""
        return await self._change(attachment_id, error=error[:500], next_attempt_at=when)

    async def give_up(self, attachment_id: uuid.UUID, state: str, error: str) -> Attachment:
        """`unavailable` (WhatsApp no longer gives it) or `rejected` (too large, empty, not what it says)."""
        return await self._change(attachment_id, state=state, error=error[:500])

    async def set_transcript(self, attachment_id: uuid.UUID, transcript: str) -> Attachment:
        return await self._change(attachment_id, transcript=transcript[:32_000])

    async def documents_to_read(self, session_id: uuid.UUID) -> list[Attachment]:
        """The session's stored documents that no reply has read yet (see papo.knowledge.chat_files)."""
        rows = await self.db.scalars(
            select(Attachment)
            .where(
                Attachment.tenant_id == self.principal.tenant_id,
                Attachment.session_id == session_id,
                Attachment.kind == "document",
                Attachment.state == "stored",
                Attachment.data["passages"].is_(None),  # not read yet (data may be JSON null)
                Attachment.error.is_(None),
            )
            .order_by(Attachment.created_at, Attachment.id)
        )
        return list(rows)

    async def file_names(self, attachment_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        rows = await self.db.execute(
            select(Attachment.id, Attachment.file_name).where(
                Attachment.tenant_id == self.principal.tenant_id, Attachment.id.in_(attachment_ids)
            )
        )
        return {row.id: row.file_name or "document" for row in rows}

    async def set_document_read(self, attachment_id: uuid.UUID, passages: int, error: str | None) -> Attachment:
        """How reading a document went: its passage count, or why it could not be read."""
        return await self._change(attachment_id, data={"passages": passages}, error=error[:500] if error else None)

    def _announce(self, row: Attachment) -> None:
        payload = attachment_view(row) | {"session_id": str(row.session_id)}
        emit(
            self.db,
            "attachment.updated",
            payload,
            tenant_id=self.principal.tenant_id,
            user_id=None if row.channel == "whatsapp" else row.user_id,
        )


async def take_blob_deletions(session: AsyncSession, limit: int) -> list[str]:
    """Blob keys whose attachments are gone, taken off the queue: the caller deletes the blobs (a
    crash before it does leaves an orphan file, never a row whose file is missing)."""
    rows = await driver(session).fetch("SELECT * FROM papo_claim_blob_deletions($1)", limit)
    return [row["deletion_blob_key"] for row in rows]


async def claim_downloads(session: AsyncSession, limit: int) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Downloads that are due, across tenants (tenant, attachment, attempt number), leased for a minute."""
    rows = await driver(session).fetch("SELECT * FROM papo_claim_media_downloads($1)", limit)
    return [(row["media_tenant_id"], row["media_id"], row["media_attempts"]) for row in rows]


async def delete_removed_blobs(db: Database, blobs: BlobStore, poll_seconds: float) -> None:
    """Forever: delete the blobs whose attachments were removed (retention, purge, a deleted chat)."""

    async def batch() -> int:
        async with db.transaction() as session:
            keys = await take_blob_deletions(session, BLOB_DELETIONS_PER_BATCH)
        for key in keys:
            await blobs.delete(key)
        return len(keys)

    await work_when_woken(asyncio.Event(), poll_seconds, batch, name="blob deletions")
