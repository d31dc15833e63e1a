"""Knowledge base tables (migration 0031): collections, documents, their passages and vectors."""

from __future__ import annotations

import uuid
from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, ENUM, REAL, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base, Timestamps, new_id

DOCUMENT_STATES = ("pending", "indexing", "ready", "failed")
EMBEDDINGS_TABLE = "knowledge_embeddings"  # exists only where the server has pgvector (see 0031)


class KnowledgeCollection(Timestamps, Base):
    __tablename__ = "knowledge_collections"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default=text("''"))

    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
        Index("uq_knowledge_collections_name", "tenant_id", func.lower(text("name")), unique=True),
    )


class KnowledgeDocument(Timestamps, Base):
    __tablename__ = "knowledge_documents"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    collection_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    url: Mapped[str | None] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(Text)
    mime_type: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)
    blob_key: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    error: Mapped[str | None] = mapped_column(Text)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "collection_id"],
            ["knowledge_collections.tenant_id", "knowledge_collections.id"],
            ondelete="CASCADE",
            name="fk_knowledge_documents_collection",
        ),
        CheckConstraint("source IN ('upload', 'url')", name="source"),
        CheckConstraint("state IN ('pending', 'indexing', 'ready', 'failed')", name="state"),
        CheckConstraint(
            "(source = 'upload' AND blob_key IS NOT NULL) OR (source = 'url' AND url IS NOT NULL)", name="origin"
        ),
        Index("ix_knowledge_documents_collection", "tenant_id", "collection_id", "created_at"),
        Index(
            "ix_knowledge_documents_due", "next_attempt_at", postgresql_where=text("state IN ('pending', 'indexing')")
        ),
    )


class KnowledgeChunk(Base):
    __tablename__ = "knowledge_chunks"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    page: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    search_vector: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed("to_tsvector('simple'::regconfig, papo_fold(content))", persisted=True),
        nullable=True,  # as migrated, though never NULL (content is not)
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "document_id"],
            ["knowledge_documents.tenant_id", "knowledge_documents.id"],
            ondelete="CASCADE",
            name="fk_knowledge_chunks_document",
        ),
        Index("ix_knowledge_chunks_search_vector", "search_vector", postgresql_using="gin"),
        Index("ix_knowledge_chunks_collection", "tenant_id", "collection_id"),
    )


class KnowledgeEmbedding(Base):
    """Only where the server has pgvector (the migration creates the table there alone)."""

    __tablename__ = EMBEDDINGS_TABLE

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    embedding: Mapped[list[float]] = mapped_column(Vector(), nullable=False)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "document_id", "ordinal"],
            ["knowledge_chunks.tenant_id", "knowledge_chunks.document_id", "knowledge_chunks.ordinal"],
            ondelete="CASCADE",
            name="fk_knowledge_embeddings_chunk",
        ),
        Index("ix_knowledge_embeddings_collection", "tenant_id", "collection_id", "model"),
        Index(
            "ix_knowledge_embeddings_demo_hnsw",
            text("(embedding::vector(256)) vector_cosine_ops"),
            postgresql_using="hnsw",
            postgresql_where=text("model = 'papo-demo-hash-256'"),
        ),
    )


class AssistantCollection(Base):
    __tablename__ = "assistant_collections"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    assistant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    collection_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "assistant_id"],
            ["assistants.tenant_id", "assistants.id"],
            ondelete="CASCADE",
            name="fk_assistant_collections_assistant",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "collection_id"],
            ["knowledge_collections.tenant_id", "knowledge_collections.id"],
            ondelete="CASCADE",
            name="fk_assistant_collections_collection",
        ),
        Index("ix_assistant_collections_collection", "tenant_id", "collection_id"),
    )


class ChatDocumentChunk(Base):
    """A passage of a document attached in a chat (migration 0037): that chat's replies retrieve
    from it. Visible exactly like its attachment (channel and owner copied), deleted with it."""

    __tablename__ = "chat_document_chunks"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    attachment_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    channel: Mapped[str] = mapped_column(ENUM(name="chat_channel", create_type=False), nullable=False)
    user_id: Mapped[str | None] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    search_vector: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed("to_tsvector('simple'::regconfig, papo_fold(content))", persisted=True),
        nullable=True,  # as migrated, though never NULL (content is not)
    )
    embedding: Mapped[list[float] | None] = mapped_column(ARRAY(REAL))

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "attachment_id"],
            ["attachments.tenant_id", "attachments.id"],
            ondelete="CASCADE",
            name="fk_chat_document_chunks_attachment",
        ),
        Index("ix_chat_document_chunks_session", "tenant_id", "session_id"),
    )
