"""Attachments over HTTP: what a message carries, and its bytes, under the message's own visibility.

The bytes are served so a browser never runs them: `nosniff` (as on every answer), a sandboxing
CSP, inline only for image, audio
and video types a browser plays without scripting (never SVG or HTML), everything else as a
download. Audio and video answer Range requests, so players can seek."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from papo.auth.deps import CurrentPrincipal, DbSession
from papo.blobs import BlobStore
from papo.chat.attachments import Attachments, attachment_view
from papo.chat.schemas import AttachmentOut
from papo.errors import DomainError, NotFound
from papo.runtime import current_runtime

INLINE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "audio/aac",
        "audio/amr",
        "audio/opus",
        "video/mp4",
        "video/3gpp",
        "video/webm",
    }
)
SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class AttachmentsRuntime(Protocol):
    blobs: BlobStore


State = Annotated[AttachmentsRuntime, Depends(current_runtime)]
router = APIRouter(prefix="/api/v1/attachments", tags=["chat"])


class RangeNotSatisfiable(DomainError):
    status, slug, title = 416, "range-not-satisfiable", "Range not satisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range asked for (inclusive ends), None for the whole file; several ranges are
    answered with the whole file, as HTTP allows."""
    if not header:
        return None
    match = SINGLE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"this file has {size} bytes", headers={"Content-Range": f"bytes */{size}"})
    return start, end


@router.get("/{attachment_id}", response_model=AttachmentOut)
async def get_attachment(
    attachment_id: uuid.UUID, session: DbSession, principal: CurrentPrincipal
) -> dict[str, object]:
    return attachment_view(await Attachments(session, principal).get(attachment_id))


@router.get(
    "/{attachment_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "The range asked for"}},
)
async def attachment_content(
    attachment_id: uuid.UUID, request: Request, session: DbSession, principal: CurrentPrincipal, state: State
) -> Response:
    """The file's bytes (404 until it is stored, and for anyone who may not see its message)."""
    row = await Attachments(session, principal).get(attachment_id)
    if row.state != "stored" or row.blob_key is None or row.size is None:
        raise NotFound("this attachment has no file (yet)")
    mime_type = row.mime_type or "application/octet-stream"
    inline = mime_type in INLINE_TYPES
    name = (row.file_name or f"{row.kind}-{row.id.hex[:8]}").replace('"', "").replace("\\", "")
    headers = {
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, max-age=3600",
        "Accept-Ranges": "bytes",
        "ETag": f'"{row.sha256}"',
        "Content-Disposition": ("inline" if inline else "attachment") + f"; filename*=UTF-8''{quote(name, safe='')}",
    }
    wanted = byte_range(request.headers.get("range"), row.size)
    start, end = wanted if wanted is not None else (0, row.size - 1)
    headers["Content-Length"] = str(end - start + 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{row.size}"
    return StreamingResponse(
        state.blobs.read(row.blob_key, start, end),
        status_code=206 if wanted is not None else 200,
        media_type=mime_type if inline else "application/octet-stream",
        headers=headers,
    )
