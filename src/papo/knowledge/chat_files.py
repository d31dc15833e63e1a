"""Files a user attaches in a chat with an assistant (the web app or the API; a WhatsApp customer's
photos and documents arrive as attachments too):

- images go to a model that takes them (`accepts_images`) as image parts; otherwise, and for the
  demo, the text names them;
- documents are read (the knowledge base's extraction and chunking) the first time a reply needs
  them, into passages that only this chat retrieves from — stored like the attachment they come
  from (its owner and channel), so row-level security keeps them as private as the chat.

A document that cannot be read (encrypted, broken, not what it says) keeps its reason on the
attachment; the reply goes on without it."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from fastapi import UploadFile

from papo.auth.service import Principal
from papo.blobs import BlobStore
from papo.chat.attachments import (
    Attachments,
    NewAttachment,
    StoredFile,
    safe_file_name,
    upload_head,
    write_upload,
)
from papo.errors import UnsupportedFile
from papo.knowledge import repository
from papo.knowledge.chunking import Passage
from papo.knowledge.embeddings import EmbeddingError
from papo.knowledge.extract import DOCX, Unreadable, document_type
from papo.knowledge.indexer import KnowledgeIndexer, read_passages
from papo.knowledge.service import QuestionEmbedding, text_query
from papo.settings import Settings

log = structlog.get_logger(__name__)

IMAGE_SIGNATURES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}
MAX_IMAGE_BYTES_FOR_MODEL = 20 * 1024 * 1024  # what providers take in one image part
MAX_IMAGES_FOR_MODEL = 4  # the newest ones; earlier images are named, not sent again
CHUNKS_SEARCHED = 5000
PASSAGES_SHOWN = 4
RRF_K = 60


def file_kind(head: bytes, file_name: str | None, declared: str | None) -> tuple[str, str]:
    """(attachment kind, MIME type) from the file's first bytes, then its name: a photo (JPEG, PNG,
    GIF, WebP) or a document papo reads (PDF, DOCX, HTML, Markdown, text, CSV)."""
    for signature, mime_type in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return "image", mime_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "image/webp"
    if head.startswith(b"PK\x03\x04") and (file_name or "").lower().endswith(".docx"):
        return "document", DOCX  # the archive's directory is at its end: read whole when indexed
    try:
        return "document", document_type(head, file_name, declared)
    except Unreadable as exc:
        raise UnsupportedFile(
            "a chat takes photos (JPEG, PNG, GIF, WebP) and documents (PDF, DOCX, HTML, Markdown, text, CSV)"
        ) from exc


async def store_chat_file(
    blobs: BlobStore, settings: Settings, attachments: Attachments, upload: UploadFile
) -> StoredFile:
    """The user's file, checked (type, size, the company's quota) and streamed into the blob store;
    nothing is kept when it is refused."""
    head = await upload_head(upload)
    kind, mime_type = file_kind(head, upload.filename, upload.content_type)
    limit = settings.media_max_bytes if kind == "image" else min(settings.media_max_bytes, settings.knowledge_max_bytes)
    attachment_id, key, written = await write_upload(
        blobs, settings, attachments, upload, limit, "a file in a chat may have at most"
    )
    name = safe_file_name(upload.filename)
    part = NewAttachment(kind, mime_type=mime_type, file_name=name, size=written.size, sha256=written.sha256)
    return StoredFile(attachment_id, part, key)


@dataclass(frozen=True)
class ChatPassage:
    attachment_id: uuid.UUID
    title: str
    page: int | None
    ordinal: int
    content: str
    score: float
    relevant: bool


class ChatFiles:
    """What a reply makes of the files in its chat."""

    def __init__(self, knowledge: KnowledgeIndexer) -> None:
        self.db = knowledge.db
        self.settings = knowledge.settings
        self.blobs = knowledge.blobs
        self.embedder = knowledge.embedder
        self.vectors = knowledge.vectors

    async def read_documents(self, principal: Principal, session_id: uuid.UUID) -> None:
        """Read the chat's documents no reply has read yet into its passages (outside any
        transaction while the file is read and its passages embedded)."""
        async with self.db.transaction(principal.context()) as session:
            waiting = await Attachments(session, principal).documents_to_read(session_id)
        for attachment in waiting:
            found: list[Passage] = []
            vectors, error = None, None
            try:
                assert attachment.blob_key is not None  # stored documents have their bytes
                data = b"".join([chunk async for chunk in self.blobs.read(attachment.blob_key)])
                mime_type = document_type(data, attachment.file_name, attachment.mime_type)
                _, found = await read_passages(data, mime_type, self.settings)
                if self.vectors:
                    try:
                        vectors = await self.embedder.embed([passage.content for passage in found])
                    except EmbeddingError as exc:  # full text still finds its passages
                        log.warning("chat document not embedded", error=str(exc))
            except Unreadable as exc:
                error = f"could not read this document: {exc}"
            async with self.db.transaction(principal.context()) as session:
                if found and error is None:
                    await repository.add_chat_chunks(session, principal.tenant_id, attachment, found, vectors)
                await Attachments(session, principal).set_document_read(attachment.id, len(found), error)

    async def search(
        self, principal: Principal, session_id: uuid.UUID, embedding: QuestionEmbedding
    ) -> list[ChatPassage]:
        """The chat's passages that best answer the question (full text and vector, fused by
        reciprocal rank), best first."""
        question = embedding.question
        ranking = text_query(question)
        async with self.db.transaction(principal.context()) as session:
            chunks = await repository.chat_chunks(session, principal.tenant_id, session_id, ranking, CHUNKS_SEARCHED)
            if not chunks:
                return []
            names = await Attachments(session, principal).file_names(list({c.attachment_id for c in chunks}))
        scores: dict[int, float] = {}
        similarity: dict[int, float] = {}
        by_text = sorted((i for i, c in enumerate(chunks) if c.matched), key=lambda i: -chunks[i].rank)
        for position, index in enumerate(by_text):
            scores[index] = scores.get(index, 0.0) + 1.0 / (RRF_K + position + 1)
        embedded = [i for i, c in enumerate(chunks) if c.embedding is not None]
        if embedded and question.strip():
            try:
                _, vector = await embedding.get()
            except EmbeddingError:
                vector = None
            asked = np.array(vector, dtype=np.float32) if vector is not None else None
            if asked is not None:
                same_size = [i for i in embedded if len(chunks[i].embedding or ()) == len(asked)]
                if same_size:
                    matrix = np.array([chunks[i].embedding for i in same_size], dtype=np.float32)
                    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(asked) or 1.0)
                    cosines = matrix @ asked / np.where(norms == 0, 1.0, norms)
                    for position, order in enumerate(np.argsort(-cosines)[:50]):
                        index = same_size[int(order)]
                        similarity[index] = float(cosines[order])
                        scores[index] = scores.get(index, 0.0) + 1.0 / (RRF_K + position + 1)
        best = sorted(scores, key=lambda i: -scores[i])[:PASSAGES_SHOWN]
        floor = self.settings.knowledge_min_similarity
        return [
            ChatPassage(
                chunks[i].attachment_id,
                names.get(chunks[i].attachment_id, "document"),
                chunks[i].page,
                chunks[i].ordinal,
                chunks[i].content,
                round(scores[i], 5),
                chunks[i].matched or similarity.get(i, -1.0) >= floor,
            )
            for i in best
        ]

    async def image_part(self, file: dict[str, Any]) -> dict[str, Any] | None:
        """An attached image as the chat API's image part (a data URL), None when it is too large."""
        if (file.get("size") or 0) > MAX_IMAGE_BYTES_FOR_MODEL or not file.get("blob_key"):
            return None
        data = b"".join([chunk async for chunk in self.blobs.read(file["blob_key"])])
        encoded = base64.b64encode(data).decode()
        return {"type": "image_url", "image_url": {"url": f"data:{file['mime_type']};base64,{encoded}"}}
