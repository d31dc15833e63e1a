"""Knowledge base API shapes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class CollectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class CollectionOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    documents: dict[str, int]  # by state: pending, indexing, ready, failed
    created_at: datetime
    updated_at: datetime


class UrlDocumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=8, max_length=2000)
    title: str | None = Field(default=None, max_length=300)


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    collection_id: uuid.UUID
    title: str
    source: str
    url: str | None
    file_name: str | None
    mime_type: str | None
    size: int | None
    state: str
    error: str | None
    pages: int | None
    chunks: int
    attempts: int
    created_at: datetime
    updated_at: datetime


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=2000)
    collection_ids: list[uuid.UUID] | None = Field(default=None, max_length=100)
    assistant_id: uuid.UUID | None = None
    limit: int = Field(default=5, ge=1, le=50)


class PassageOut(BaseModel):
    document_id: uuid.UUID
    collection_id: uuid.UUID
    title: str
    page: int | None
    ordinal: int
    content: str
    score: float
    similarity: float | None
    matched_words: bool
    relevant: bool
    url: str | None
    file_name: str | None


class SearchOut(BaseModel):
    passages: list[PassageOut]
    retrieval: str  # "vector+text" or "text"
    embedder: str  # the model, or papo's demo embedder


class AssistantCollections(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection_ids: list[uuid.UUID] = Field(max_length=100)
