"""The only SQL on the knowledge tables. Row-level security scopes every statement to the caller's
tenant (and lets only owners, admins and API keys write); the tenant is also named in each
statement, so the planner uses the tenant-leading indexes."""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, driver, rows_changed, sql_literal
from papo.knowledge.chunking import Passage
from papo.knowledge.models import (
    EMBEDDINGS_TABLE,
    AssistantCollection,
    KnowledgeChunk,
    KnowledgeCollection,
    KnowledgeDocument,
)

log = structlog.get_logger(__name__)
INSERT_CHUNKS = """
    INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, collection_id, page, content)
    SELECT $1, $2, c.ordinal, $3, c.page, c.content
      FROM unnest($4::integer[], $5::integer[], $6::text[]) AS c(ordinal, page, content)
"""
INSERT_EMBEDDINGS = """
    INSERT INTO knowledge_embeddings (tenant_id, document_id, ordinal, collection_id, model, embedding)
    SELECT $1, $2, e.ordinal, $3, $4, e.embedding::vector
      FROM unnest($5::integer[], $6::text[]) AS e(ordinal, embedding)
"""

# Passages ranked by full text and by vector, fused by reciprocal rank (k = 60): a passage high
# in either list rises, one high in both rises most. Each list is cut at $5 before fusing.
# Full text: the passages matching the filter $6 (the question's anchors, see
# papo.knowledge.service.text_filter, or any of its words), at most $7 of them, ranked by the
# question's words $3. PostgreSQL's ranking knows no word rarity, and a word every passage has
# would make it rank the whole collection; the cap bounds that cost. The match goes through
# papo_knowledge_candidates (migration 0035): under RLS the GIN index could not be used.
TEXT_HITS = """
    text_hits AS (
      SELECT m.document_id, m.ordinal,
             row_number() OVER (ORDER BY ts_rank_cd(m.search_vector, to_tsquery('simple', $3)) DESC,
                                m.document_id, m.ordinal) AS position
        FROM papo_knowledge_candidates($2::uuid[], to_tsquery('simple', $6), $7) k
        JOIN knowledge_chunks m
          ON m.tenant_id = $1 AND m.document_id = k.candidate_document_id AND m.ordinal = k.candidate_ordinal
       ORDER BY position
       LIMIT $5)"""
VECTOR_HITS = """
    vector_hits AS (
      SELECT v.document_id, v.ordinal, 1 - v.distance AS similarity,
             row_number() OVER (ORDER BY v.distance, v.document_id, v.ordinal) AS position
        FROM (SELECT e.document_id, e.ordinal, {distance} AS distance
                FROM knowledge_embeddings e
               WHERE e.tenant_id = $1 AND e.collection_id = ANY($2::uuid[]) AND e.model = {model}
               ORDER BY {distance}
               LIMIT $5) v)"""
# A model whose vectors have an HNSW index (the demo embedder's, migration 0034; the configured
# provider model's when PAPO_EMBEDDING_DIMENSIONS is set, made by `papo migrate`) is searched
# through it: the query names the model as the index's predicate does and compares vectors of
# its size.
EXACT_DISTANCE = "e.embedding <=> $9::text::vector"
INDEXED_DISTANCE = "e.embedding::vector({dimensions}) <=> $8::text::vector({dimensions})"


def vector_index_sql(model: str, dimensions: int) -> str:
    """The HNSW index for one model's vectors (`papo migrate` makes the configured model's)."""
    name = "ix_knowledge_embeddings_hnsw_" + hashlib.sha256(model.encode()).hexdigest()[:12]
    return (
        f"CREATE INDEX IF NOT EXISTS {name} ON knowledge_embeddings "
        f"USING hnsw ((embedding::vector({int(dimensions)})) vector_cosine_ops) WHERE model = {sql_literal(model)}"
    )


FUSED_TEMPLATE = """
    WITH {lists},
    fused AS (
      SELECT h.document_id, h.ordinal, sum(1.0 / (60 + h.position)) AS score,
             max(h.similarity) AS similarity, bool_or(h.from_text) AS matched_words
        FROM ({union}) AS h
       GROUP BY h.document_id, h.ordinal)
    SELECT f.document_id, f.ordinal, f.score::float8 AS score, f.similarity::float8 AS similarity,
           f.matched_words, c.content, c.page, d.title, d.collection_id, d.url, d.file_name
      FROM fused f
      JOIN knowledge_chunks c ON c.tenant_id = $1 AND c.document_id = f.document_id AND c.ordinal = f.ordinal
      JOIN knowledge_documents d ON d.tenant_id = $1 AND d.id = f.document_id
     ORDER BY f.score DESC, f.document_id, f.ordinal
     LIMIT $4
"""
TEXT_UNION = "SELECT document_id, ordinal, position, NULL::float8 AS similarity, true AS from_text FROM text_hits"
VECTOR_UNION = "SELECT document_id, ordinal, position, similarity, false AS from_text FROM vector_hits"
RETRIEVE_FUSED = FUSED_TEMPLATE.format(
    lists=TEXT_HITS + "," + VECTOR_HITS.format(distance=EXACT_DISTANCE, model="$8"),
    union=TEXT_UNION + " UNION ALL " + VECTOR_UNION,
)


@functools.cache
def indexed_retrieval(model: str, dimensions: int) -> str:
    distance = INDEXED_DISTANCE.format(dimensions=int(dimensions))
    return FUSED_TEMPLATE.format(
        lists=TEXT_HITS + "," + VECTOR_HITS.format(distance=distance, model=sql_literal(model)),
        union=TEXT_UNION + " UNION ALL " + VECTOR_UNION,
    )


RETRIEVE_TEXT = FUSED_TEMPLATE.format(lists=TEXT_HITS, union=TEXT_UNION)  # without pgvector


@dataclass(frozen=True)
class Hit:
    document_id: uuid.UUID
    ordinal: int
    score: float
    similarity: float | None
    matched_words: bool
    content: str
    page: int | None
    title: str
    collection_id: uuid.UUID
    url: str | None
    file_name: str | None


class DuplicateName(Exception):
    pass


class MissingAssistant(Exception):
    pass


async def create_vector_index(owner_dsn: str, model: str, dimensions: int) -> bool:
    """As the schema's owner (`papo migrate`): the HNSW index for `model`'s vectors, where the
    database has the embeddings table. Whether it exists now."""
    owner = await asyncpg.connect(owner_dsn)
    try:
        if not await owner.fetchval("SELECT to_regclass($1) IS NOT NULL", EMBEDDINGS_TABLE):
            return False
        await owner.execute(vector_index_sql(model, dimensions))
        return True
    finally:
        await owner.close()


async def vectors_available(db: Database) -> bool:
    return bool(await db.call("SELECT to_regclass($1) IS NOT NULL", EMBEDDINGS_TABLE))


# ---- collections ------------------------------------------------------------------------------


async def add_collection(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, description: str
) -> KnowledgeCollection:
    collection = KnowledgeCollection(tenant_id=tenant_id, name=name, description=description)
    session.add(collection)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise DuplicateName from exc
    return collection


async def collections(session: AsyncSession, tenant_id: uuid.UUID) -> list[KnowledgeCollection]:
    query = select(KnowledgeCollection).where(KnowledgeCollection.tenant_id == tenant_id)
    return list((await session.scalars(query.order_by(func.lower(KnowledgeCollection.name)))).all())


async def collection(
    session: AsyncSession, tenant_id: uuid.UUID, collection_id: uuid.UUID
) -> KnowledgeCollection | None:
    return await session.get(KnowledgeCollection, (tenant_id, collection_id))


async def document_counts(session: AsyncSession, tenant_id: uuid.UUID) -> dict[tuple[uuid.UUID, str], int]:
    rows = await session.execute(
        select(KnowledgeDocument.collection_id, KnowledgeDocument.state, func.count())
        .where(KnowledgeDocument.tenant_id == tenant_id)
        .group_by(KnowledgeDocument.collection_id, KnowledgeDocument.state)
    )
    return {(row[0], row[1]): row[2] for row in rows}


async def rename_collection(
    session: AsyncSession, tenant_id: uuid.UUID, collection_id: uuid.UUID, values: dict[str, Any]
) -> KnowledgeCollection | None:
    try:
        async with session.begin_nested():
            found: KnowledgeCollection | None = await session.scalar(
                update(KnowledgeCollection)
                .where(KnowledgeCollection.tenant_id == tenant_id, KnowledgeCollection.id == collection_id)
                .values(**values)
                .returning(KnowledgeCollection)
            )
    except IntegrityError as exc:
        raise DuplicateName from exc
    return found


async def delete_collection(session: AsyncSession, tenant_id: uuid.UUID, collection_id: uuid.UUID) -> bool:
    statement = delete(KnowledgeCollection).where(
        KnowledgeCollection.tenant_id == tenant_id, KnowledgeCollection.id == collection_id
    )
    return await rows_changed(session, statement) > 0


# ---- documents --------------------------------------------------------------------------------


async def add_document(session: AsyncSession, document: KnowledgeDocument) -> KnowledgeDocument:
    session.add(document)
    await session.flush()
    await session.refresh(document)
    return document


async def documents(session: AsyncSession, tenant_id: uuid.UUID, collection_id: uuid.UUID) -> list[KnowledgeDocument]:
    query = select(KnowledgeDocument).where(
        KnowledgeDocument.tenant_id == tenant_id, KnowledgeDocument.collection_id == collection_id
    )
    return list((await session.scalars(query.order_by(KnowledgeDocument.created_at.desc()))).all())


async def document(session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID) -> KnowledgeDocument | None:
    return await session.get(KnowledgeDocument, (tenant_id, document_id), populate_existing=True)


async def delete_document(session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID) -> bool:
    statement = delete(KnowledgeDocument).where(
        KnowledgeDocument.tenant_id == tenant_id, KnowledgeDocument.id == document_id
    )
    return await rows_changed(session, statement) > 0


async def set_document(session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(KnowledgeDocument)
        .where(KnowledgeDocument.tenant_id == tenant_id, KnowledgeDocument.id == document_id)
        .values(**values)
    )


async def claim_documents(db: Database, limit: int) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    rows = await db.rows(
        "SELECT knowledge_tenant_id, knowledge_document_id, knowledge_attempts FROM papo_claim_knowledge_documents($1)",
        limit,
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def replace_passages(
    session: AsyncSession,
    document: KnowledgeDocument,
    found: list[Passage],
    model: str | None,
    vectors: list[str] | None,
) -> None:
    """The document's passages (and their vectors, as pgvector text) instead of the ones before,
    in the caller's transaction: a reader sees the old set or the new one, never a mix."""
    connection = driver(session)
    await session.execute(
        delete(KnowledgeChunk).where(
            KnowledgeChunk.tenant_id == document.tenant_id, KnowledgeChunk.document_id == document.id
        )
    )
    key = (document.tenant_id, document.id, document.collection_id)
    ordinals = [passage.ordinal for passage in found]
    await connection.execute(
        INSERT_CHUNKS, *key, ordinals, [passage.page for passage in found], [passage.content for passage in found]
    )
    if model is not None and vectors is not None:
        await connection.execute(INSERT_EMBEDDINGS, *key, model, ordinals, vectors)


def _retrieval(
    tenant_id: uuid.UUID,
    collection_ids: list[uuid.UUID],
    ranking: str,
    limit: int,
    text_filter: str,
    model: str | None,
    vector: str | None,
    candidates: int,
    text_candidates: int,
    indexed: tuple[str, int] | None,
) -> tuple[str, list[Any]]:
    arguments: list[Any] = [tenant_id, collection_ids, ranking, limit, candidates, text_filter, text_candidates]
    if model is not None and vector is not None and indexed is not None and indexed[0] == model:
        return indexed_retrieval(*indexed), [*arguments, vector]
    if model is not None and vector is not None:
        return RETRIEVE_FUSED, [*arguments, model, vector]
    return RETRIEVE_TEXT, arguments


async def retrieve(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    collection_ids: list[uuid.UUID],
    ranking: str,
    limit: int,
    *,
    text_filter: str,
    model: str | None,
    vector: str | None,
    candidates: int = 50,
    text_candidates: int = 2000,
    indexed: tuple[str, int] | None = None,
    explain: bool = False,
) -> list[Hit]:
    """The fused passages, best first. `explain`: the statement's EXPLAIN ANALYZE is logged instead
    of nothing (for bench-knowledge's profile of a missed target)."""
    statement, arguments = _retrieval(
        tenant_id, collection_ids, ranking, limit, text_filter, model, vector, candidates, text_candidates, indexed
    )
    connection = driver(session)
    if explain:
        plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *arguments)
        log.warning("retrieval plan", plan="\n".join(row[0] for row in plan))
    rows = await connection.fetch(statement, *arguments)
    return [Hit(**dict(row)) for row in rows]


# ---- assistants ---------------------------------------------------------------------------------


async def assistant_collection_ids(
    session: AsyncSession, tenant_id: uuid.UUID, assistant_id: uuid.UUID
) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(AssistantCollection.collection_id).where(
            AssistantCollection.tenant_id == tenant_id, AssistantCollection.assistant_id == assistant_id
        )
    )
    return list(rows.all())


GROUNDING_SOURCES = """
SELECT ARRAY(SELECT collection_id FROM assistant_collections WHERE tenant_id = $1 AND assistant_id = $2) AS collections,
       EXISTS (SELECT 1 FROM chat_document_chunks WHERE tenant_id = $1 AND session_id = $3) AS chat_passages
"""


@dataclass(frozen=True)
class GroundingSources:
    """Where a reply can look things up: its assistant's collections, and whether the chat has
    passages of documents attached to it."""

    collections: list[uuid.UUID]
    chat_passages: bool


async def grounding_sources(
    session: AsyncSession, tenant_id: uuid.UUID, assistant_id: uuid.UUID, chat_id: uuid.UUID
) -> GroundingSources:
    row = await driver(session).fetchrow(GROUNDING_SOURCES, tenant_id, assistant_id, chat_id)
    assert row is not None
    return GroundingSources(list(row["collections"]), row["chat_passages"])


async def set_assistant_collections(
    session: AsyncSession, tenant_id: uuid.UUID, assistant_id: uuid.UUID, collection_ids: list[uuid.UUID]
) -> None:
    """Raises MissingAssistant when the tenant has no such assistant (the foreign key says so)."""
    try:
        async with session.begin_nested():
            await session.execute(
                delete(AssistantCollection).where(
                    AssistantCollection.tenant_id == tenant_id, AssistantCollection.assistant_id == assistant_id
                )
            )
            for collection_id in dict.fromkeys(collection_ids):
                session.add(
                    AssistantCollection(tenant_id=tenant_id, assistant_id=assistant_id, collection_id=collection_id)
                )
            await session.flush()
    except IntegrityError as exc:
        raise MissingAssistant from exc


# ---- documents attached in chats ----------------------------------------------------------------

INSERT_CHAT_CHUNK = """
INSERT INTO chat_document_chunks
       (tenant_id, attachment_id, ordinal, session_id, channel, user_id, page, content, embedding)
VALUES ($1, $2, $3, $4, $5::chat_channel, $6, $7, $8, $9)
"""
CHAT_CHUNKS = """
SELECT attachment_id, ordinal, page, content, embedding,
       CASE WHEN $3 = '' THEN 0 ELSE ts_rank_cd(search_vector, to_tsquery('simple', $3)) END AS rank,
       $3 <> '' AND search_vector @@ to_tsquery('simple', $3) AS matched
  FROM chat_document_chunks
 WHERE tenant_id = $1 AND session_id = $2
 ORDER BY attachment_id, ordinal
 LIMIT $4
"""


@dataclass(frozen=True)
class ChatChunk:
    attachment_id: uuid.UUID
    ordinal: int
    page: int | None
    content: str
    embedding: list[float] | None
    rank: float
    matched: bool


async def add_chat_chunks(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    attachment: Any,
    found: list[Passage],
    vectors: list[list[float]] | None,
) -> None:
    """A chat document's passages, visible like its attachment (channel and owner copied)."""
    rows = [
        (
            tenant_id,
            attachment.id,
            ordinal,
            attachment.session_id,
            str(attachment.channel),
            attachment.user_id,
            passage.page,
            passage.content,
            vectors[ordinal] if vectors is not None else None,
        )
        for ordinal, passage in enumerate(found)
    ]
    await driver(session).executemany(INSERT_CHAT_CHUNK, rows)


async def chat_chunks(
    session: AsyncSession, tenant_id: uuid.UUID, session_id: uuid.UUID, ranking: str, limit: int
) -> list[ChatChunk]:
    rows = await driver(session).fetch(CHAT_CHUNKS, tenant_id, session_id, ranking, limit)
    return [ChatChunk(**dict(row)) for row in rows]
