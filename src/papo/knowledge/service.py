"""Knowledge base rules: who manages collections and documents, what a document may be, and
retrieval for a question (fused vector + full-text ranks, scoped to the tenant and to the
collections asked for or attached to an assistant)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.blobs import WrittenBlob
from papo.chat.search import fold
from papo.db.base import new_id
from papo.errors import Conflict, InvalidInput, NotFound
from papo.knowledge import repository
from papo.knowledge.embeddings import DEMO_DIMENSIONS, DEMO_MODEL, Embedder, EmbeddingError, vector_literal
from papo.knowledge.models import DOCUMENT_STATES, KnowledgeCollection, KnowledgeDocument
from papo.knowledge.repository import DuplicateName, GroundingSources, Hit, MissingAssistant
from papo.knowledge.schemas import CollectionOut
from papo.netguard import NetGuard, TargetRefused
from papo.settings import Settings

COLLECTION_NOT_FOUND = "knowledge collection not found"
DOCUMENT_NOT_FOUND = "document not found"
_WORD = re.compile(r"\w+")
# Words that carry no subject in a question (Portuguese and English); the rest are OR-ed, so a
# passage sharing more of the question's words ranks higher without needing all of them.
_STOPWORD_TEXT = """
a o as os um uma uns umas de do da dos das no na nos nas em por para pra com sem sob sobre
e ou mas que se nao sim ja ate como quando onde qual quais quem quanto quanta quantos quantas
ao aos pelo pela pelos pelas este esta estes estas esse essa esses essas isso isto aquilo
eu voce voces ele ela eles elas meu minha seu sua seus suas nosso nossa lhe me te
eh foi ser sao era tem ter temos tenho ha hoje pode posso podem vai vou fazer faz
the an of to in on at for from by with and or but is are was be been do does did what which
who whom how when where why can could should would will you he she it we they my your our
their this that these those there here not yes
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def text_query(question: str) -> str:
    """The question as a `to_tsquery('simple', …)` string: its subject words, folded like the
    index (papo_fold), OR-ed; a longer word matches by its stem (`devoluc:*` finds devolução and
    devoluções). Only \\w characters reach the query, so it cannot be malformed."""
    terms: list[str] = []
    for word in _WORD.findall(fold(question)):
        if word in STOPWORDS or (len(word) < 3 and not word.isdigit()):
            continue
        term = f"{word[: max(4, len(word) - 2)]}:*" if len(word) > 5 else word
        if term not in terms:
            terms.append(term)
    return " | ".join(terms[:32])


def text_filter(question: str) -> str | None:
    """The question's anchors — words with a digit in them (an order, a product model, a code) —
    all required, as a `to_tsquery` string; None when it has none. A question naming one thing
    among thousands alike is answered by the passages that name it."""
    anchors = [word for word in dict.fromkeys(_WORD.findall(fold(question))) if any(ch.isdigit() for ch in word)]
    return " & ".join(anchors[:8]) or None


@dataclass(frozen=True)
class Found:
    hit: Hit
    relevant: bool


def collection_out(row: KnowledgeCollection, counts: dict[tuple[uuid.UUID, str], int]) -> CollectionOut:
    return CollectionOut(
        id=row.id,
        name=row.name,
        description=row.description,
        documents={state: counts.get((row.id, state), 0) for state in DOCUMENT_STATES},
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _collection_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise InvalidInput("a collection needs a name", field="name")
    return name


def document_blob_key(tenant_id: uuid.UUID, document_id: uuid.UUID) -> str:
    return f"knowledge/{tenant_id.hex}/{document_id.hex}"


class KnowledgeService:
    def __init__(self, db: AsyncSession, principal: Principal, settings: Settings) -> None:
        self.db = db
        self.principal = principal
        self.settings = settings

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.principal.tenant_id

    def require_writer(self) -> None:
        self.principal.require_manager("the knowledge base")

    # ---- collections ---------------------------------------------------------------------------

    async def create_collection(self, name: str, description: str) -> CollectionOut:
        self.require_writer()
        name = _collection_name(name)
        try:
            row = await repository.add_collection(self.db, self.tenant_id, name, description)
        except DuplicateName as exc:
            raise Conflict(f"a collection named {name!r} already exists") from exc
        await self.db.refresh(row)
        return collection_out(row, {})

    async def collections(self) -> list[CollectionOut]:
        rows = await repository.collections(self.db, self.tenant_id)
        counts = await repository.document_counts(self.db, self.tenant_id)
        return [collection_out(row, counts) for row in rows]

    async def collection(self, collection_id: uuid.UUID) -> CollectionOut:
        row = await self.require_collection(collection_id)
        return collection_out(row, await repository.document_counts(self.db, self.tenant_id))

    async def update_collection(self, collection_id: uuid.UUID, values: dict[str, Any]) -> CollectionOut:
        self.require_writer()
        if "name" in values:
            values["name"] = _collection_name(values["name"])
        if not values:
            return await self.collection(collection_id)
        try:
            row = await repository.rename_collection(self.db, self.tenant_id, collection_id, values)
        except DuplicateName as exc:
            raise Conflict(f"a collection named {values['name']!r} already exists") from exc
        if row is None:
            raise NotFound(COLLECTION_NOT_FOUND)
        return collection_out(row, await repository.document_counts(self.db, self.tenant_id))

    async def delete_collection(self, collection_id: uuid.UUID) -> None:
        """The collection, its documents (their files queued for deletion) and their passages."""
        self.require_writer()
        if not await repository.delete_collection(self.db, self.tenant_id, collection_id):
            raise NotFound(COLLECTION_NOT_FOUND)

    async def require_collection(self, collection_id: uuid.UUID) -> KnowledgeCollection:
        row = await repository.collection(self.db, self.tenant_id, collection_id)
        if row is None:
            raise NotFound(COLLECTION_NOT_FOUND)
        return row

    # ---- documents -----------------------------------------------------------------------------

    def new_document_id(self) -> uuid.UUID:
        """An id for a file about to be written (its blob is named after it)."""
        self.require_writer()
        return new_id()

    async def add_upload(
        self,
        collection_id: uuid.UUID,
        document_id: uuid.UUID,
        written: WrittenBlob,
        *,
        file_name: str | None,
        mime_type: str | None,
        title: str | None,
    ) -> KnowledgeDocument:
        self.require_writer()
        await self.require_collection(collection_id)
        if written.size == 0:
            raise InvalidInput("the file is empty")
        name = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1][:255] or None
        document = KnowledgeDocument(
            tenant_id=self.tenant_id,
            id=document_id,
            collection_id=collection_id,
            title=(title or name or "document").strip()[:300],
            source="upload",
            file_name=name,
            mime_type=mime_type,
            size=written.size,
            sha256=written.sha256,
            blob_key=document_blob_key(self.tenant_id, document_id),
            created_by=self.principal.user_id,
        )
        return await repository.add_document(self.db, document)

    async def add_url(
        self, collection_id: uuid.UUID, url: str, title: str | None, guard: NetGuard
    ) -> KnowledgeDocument:
        """A page to fetch and index; refused now (422) when the outbound rules would refuse it,
        and checked again at every connection (redirects included) when it is fetched."""
        self.require_writer()
        await self.require_collection(collection_id)
        url = url.strip()
        try:
            await guard.check_url(url)
        except TargetRefused as exc:
            raise InvalidInput(str(exc) or "this URL is not allowed") from exc
        document = KnowledgeDocument(
            tenant_id=self.tenant_id,
            id=new_id(),
            collection_id=collection_id,
            title=(title or url).strip()[:300],
            source="url",
            url=url,
            created_by=self.principal.user_id,
        )
        return await repository.add_document(self.db, document)

    async def documents(self, collection_id: uuid.UUID) -> list[KnowledgeDocument]:
        await self.require_collection(collection_id)
        return await repository.documents(self.db, self.tenant_id, collection_id)

    async def document(self, document_id: uuid.UUID) -> KnowledgeDocument:
        row = await repository.document(self.db, self.tenant_id, document_id)
        if row is None:
            raise NotFound(DOCUMENT_NOT_FOUND)
        return row

    async def delete_document(self, document_id: uuid.UUID) -> None:
        """The document and its passages at once; its file is queued for deletion (same transaction)."""
        self.require_writer()
        if not await repository.delete_document(self.db, self.tenant_id, document_id):
            raise NotFound(DOCUMENT_NOT_FOUND)

    async def reindex(self, document_id: uuid.UUID) -> KnowledgeDocument:
        """Index again from the start (a changed page, a provider that failed before)."""
        self.require_writer()
        await self.document(document_id)
        await repository.set_document(
            self.db, self.tenant_id, document_id, state="pending", attempts=0, error=None, next_attempt_at=func.now()
        )
        return await self.document(document_id)

    # ---- assistants ----------------------------------------------------------------------------

    async def assistant_collections(self, assistant_id: uuid.UUID) -> list[uuid.UUID]:
        return await repository.assistant_collection_ids(self.db, self.tenant_id, assistant_id)

    async def grounding_sources(self, assistant_id: uuid.UUID, chat_id: uuid.UUID) -> GroundingSources:
        """One statement, for a reply to learn in its first transaction whether grounding has
        anywhere to look (most chats have neither collections nor documents)."""
        return await repository.grounding_sources(self.db, self.tenant_id, assistant_id, chat_id)

    async def set_assistant_collections(self, assistant_id: uuid.UUID, collection_ids: list[uuid.UUID]) -> None:
        self.require_writer()
        for collection_id in collection_ids:
            await self.require_collection(collection_id)  # another tenant's id is simply not found
        try:
            await repository.set_assistant_collections(self.db, self.tenant_id, assistant_id, collection_ids)
        except MissingAssistant as exc:
            raise NotFound("assistant not found") from exc

    # ---- retrieval -----------------------------------------------------------------------------

    async def search(
        self,
        question: str,
        collection_ids: list[uuid.UUID],
        limit: int,
        *,
        model: str | None = None,
        vector: list[float] | None = None,
    ) -> list[Found]:
        """The passages that best answer `question` in these collections, best first (by full text,
        and by `vector` too when given: the question embedded with `model`, see `embed_question`);
        each says whether it is relevant (shares a subject word with the question, or its vector is
        at least `knowledge_min_similarity` close)."""
        if not collection_ids:
            return []
        ranking = text_query(question)
        anchored = text_filter(question)

        async def retrieve(words: str) -> list[Hit]:
            return await repository.retrieve(
                self.db,
                self.tenant_id,
                collection_ids,
                ranking,
                limit,
                text_filter=words,
                model=model if vector is not None else None,
                vector=vector_literal(vector) if vector is not None else None,
                text_candidates=self.settings.knowledge_text_candidates,
                indexed=indexed_model(self.settings, model),
            )

        hits = await retrieve(anchored or ranking)
        if anchored and not any(hit.matched_words for hit in hits):
            hits = await retrieve(ranking)  # nothing names it: any of the question's words will do
        floor = self.settings.knowledge_min_similarity
        return [
            Found(hit, hit.matched_words or (hit.similarity is not None and hit.similarity >= floor)) for hit in hits
        ]


def indexed_model(settings: Settings, model: str | None) -> tuple[str, int] | None:
    """The (model, size) to search through an HNSW index, if `model`'s vectors have one."""
    if model == DEMO_MODEL:
        return model, DEMO_DIMENSIONS
    if model is not None and model == settings.embedding_model and settings.embedding_dimensions:
        return model, settings.embedding_dimensions
    return None


async def embed_question(embedder: Embedder, vectors: bool, question: str) -> tuple[str | None, list[float] | None]:
    """The model and vector to search with (None, None where the database has no vectors). Called
    outside any transaction: a provider's embeddings call must not hold a database connection.
    Raises EmbeddingError."""
    if not vectors:
        return None, None
    return embedder.model, (await embedder.embed([question]))[0]


class QuestionEmbedding:
    """A reply's question, embedded at most once, by whichever search needs it first (the chat's own
    documents, the assistant's collections): a provider's embeddings call is not made twice. A
    failure is kept too, so the second search answers from full text at once instead of retrying."""

    def __init__(self, embedder: Embedder, vectors: bool, question: str) -> None:
        self.embedder = embedder
        self.vectors = vectors
        self.question = question
        self._done: tuple[str | None, list[float] | None] | EmbeddingError | None = None

    async def get(self) -> tuple[str | None, list[float] | None]:
        """(model, vector), (None, None) where the database has no vectors; raises EmbeddingError."""
        if self._done is None:
            try:
                self._done = await embed_question(self.embedder, self.vectors, self.question)
            except EmbeddingError as exc:
                self._done = exc
        if isinstance(self._done, EmbeddingError):
            raise self._done
        return self._done
