"""The indexing worker: a document's bytes (its file, or its URL fetched under the outbound
rules), their text, its passages and their vectors, written in one transaction; every outcome is
written on the document.

No transaction is held while fetching, reading or embedding. What cannot work however often it is
tried (an encrypted PDF, a page behind a private address, a 404) fails at once with its reason; what
may work later (the embeddings endpoint down, a timeout) is retried with a doubling delay, then
fails with its reason. Deleting a document while it is indexed simply drops the result."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import structlog

from papo.auth.service import SERVICE_ROLE, Principal
from papo.blobs import BlobStore
from papo.db.engine import Database
from papo.knowledge import repository
from papo.knowledge.chunking import Passage, passages
from papo.knowledge.embeddings import (
    Embedder,
    EmbeddingError,
    RetrievalMode,
    describe,
    retrieval_mode,
    vector_literal,
)
from papo.knowledge.extract import READABLE, Extracted, Unreadable, document_type, extract
from papo.knowledge.models import KnowledgeDocument
from papo.netguard import NetGuard, TargetRefused
from papo.settings import Settings
from papo.waiting import work_when_woken

log = structlog.get_logger(__name__)
DOCUMENTS_PER_BATCH = 4
FETCH_TIMEOUT_SECONDS = 30.0
USER_AGENT = "papo-knowledge/1"


class Transient(Exception):
    """Worth trying again later; the message says what failed."""


@dataclass
class KnowledgeIndexer:
    db: Database
    settings: Settings
    blobs: BlobStore
    embedder: Embedder
    vectors: bool
    guard: NetGuard
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.ready.set()

    def describe(self) -> str:
        return describe(self.mode())

    def mode(self) -> RetrievalMode:
        return retrieval_mode(self.embedder, self.vectors)

    async def run(self) -> None:
        await work_when_woken(self.ready, self.settings.knowledge_poll_seconds, self.batch, name="knowledge indexing")

    async def batch(self) -> int:
        claimed = await repository.claim_documents(self.db, DOCUMENTS_PER_BATCH)
        for tenant_id, document_id, attempt in claimed:
            await self.index(tenant_id, document_id, attempt)
        return len(claimed)

    async def index(self, tenant_id: uuid.UUID, document_id: uuid.UUID, attempt: int) -> None:
        context = Principal(tenant_id, None, SERVICE_ROLE).context()
        async with self.db.transaction(context) as session:
            document = await repository.document(session, tenant_id, document_id)
        if document is None:
            return
        try:
            data, declared = await self._bytes(document)
            mime_type = document_type(data, document.file_name or _url_name(document.url), declared)
            extracted, found = await read_passages(data, mime_type, self.settings)
            vectors = None
            if self.vectors:
                embedded = await self.embedder.embed([passage.content for passage in found])
                vectors = [vector_literal(vector) for vector in embedded]
        except (Unreadable, TargetRefused) as exc:
            await self._failed(document, _reason(exc))
            return
        except (Transient, EmbeddingError) as exc:
            await self._retry_or_fail(document, attempt, str(exc))
            return
        title = document.title
        if extracted.title and document.source == "url" and document.title == document.url:
            title = extracted.title[:300]
        async with self.db.transaction(context) as session:
            if await repository.document(session, tenant_id, document_id) is None:
                return  # deleted while it was being read
            await repository.replace_passages(
                session, document, found, self.embedder.model if vectors else None, vectors
            )
            await repository.set_document(
                session,
                tenant_id,
                document_id,
                state="ready",
                error=None,
                title=title,
                mime_type=mime_type,
                pages=sum(1 for page in extracted.pages if page.number is not None) or None,
                chunks=len(found),
                claimed_at=None,
            )
        log.info("knowledge document indexed", tenant_id=str(tenant_id), passages=len(found), type=mime_type)

    async def _bytes(self, document: KnowledgeDocument) -> tuple[bytes, str | None]:
        limit = self.settings.knowledge_max_bytes
        if document.blob_key is not None:
            data = b"".join([chunk async for chunk in self.blobs.read(document.blob_key)])
            return data, document.mime_type
        assert document.url is not None  # the table's check: a document is a file or a URL
        try:
            async with (
                self.guard.client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=True) as http,
                http.stream("GET", document.url, headers={"User-Agent": USER_AGENT}) as answer,
            ):
                if answer.status_code >= 500 or answer.status_code == 429:
                    raise Transient(f"the page answered {answer.status_code}")
                if answer.status_code >= 400:
                    raise Unreadable(f"the page answered {answer.status_code}")
                declared = answer.headers.get("content-type", "").split(";")[0].strip().lower() or None
                if declared and declared not in READABLE and not declared.startswith("text/"):
                    raise Unreadable(f"the page is {declared}, which papo does not read")
                received = bytearray()
                async for chunk in answer.aiter_bytes():
                    received.extend(chunk)
                    if len(received) > limit:
                        raise Unreadable(f"the page is larger than {limit} bytes")
                return bytes(received), declared
        except httpx.TooManyRedirects as exc:
            raise Unreadable("the page redirects too many times") from exc
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise Transient("the page could not be fetched (network)") from exc
        except httpx.HTTPError as exc:
            raise Unreadable("the URL could not be fetched") from exc

    async def _failed(self, document: KnowledgeDocument, reason: str) -> None:
        await self._record(document, state="failed", error=reason, claimed_at=None)
        log.info("knowledge document failed", tenant_id=str(document.tenant_id), reason=reason)

    async def _retry_or_fail(self, document: KnowledgeDocument, attempt: int, reason: str) -> None:
        if attempt >= self.settings.knowledge_max_attempts:
            await self._failed(document, f"{reason} (gave up after {attempt} attempts)")
            return
        delay = self.settings.knowledge_retry_seconds * 2 ** (attempt - 1)
        await self._record(
            document,
            state="pending",
            error=f"{reason}; trying again",
            claimed_at=None,
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
        )

    async def _record(self, document: KnowledgeDocument, **values: object) -> None:
        context = Principal(document.tenant_id, None, SERVICE_ROLE).context()
        async with self.db.transaction(context) as session:
            await repository.set_document(session, document.tenant_id, document.id, **values)


async def read_passages(data: bytes, mime_type: str, settings: Settings) -> tuple[Extracted, list[Passage]]:
    """A document's text (read in a thread: a large PDF takes a while) cut into passages. Raises
    Unreadable, also when it has no text at all (a scan)."""
    extracted = await asyncio.to_thread(extract, data, mime_type, max_pages=settings.knowledge_max_pages)
    found = passages(extracted.pages, size=settings.knowledge_passage_chars, overlap=settings.knowledge_overlap_chars)
    if not found:
        raise Unreadable("the document has no text to read")
    return extracted, found


def _reason(exc: Exception) -> str:
    if isinstance(exc, TargetRefused):
        return "the URL (or a page it redirects to) is an address papo may not reach"
    return str(exc)


def _url_name(url: str | None) -> str | None:
    return None if url is None else url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
