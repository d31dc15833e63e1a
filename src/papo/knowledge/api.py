"""Knowledge base API (/api/v1/knowledge): members read and search, admins and API keys manage
collections and documents and choose which collections an assistant answers from."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Request, Response, UploadFile, status

from papo.auth.deps import CurrentPrincipal, DbSession
from papo.blobs import READ_CHUNK, BlobStore, BlobTooLarge
from papo.chat.api import Chat, ChatRuntime, MessageAllowance, schedule
from papo.chat.attachments import Attachments, attachment_view
from papo.chat.models import MessageRole
from papo.chat.schemas import AttachmentOut, MessageOut
from papo.db.engine import after_commit
from papo.errors import InvalidInput, PayloadTooLarge, Unavailable
from papo.knowledge.chat_files import store_chat_file
from papo.knowledge.embeddings import EmbeddingError
from papo.knowledge.indexer import KnowledgeIndexer
from papo.knowledge.models import KnowledgeDocument
from papo.knowledge.schemas import (
    CollectionCreate,
    CollectionOut,
    CollectionPatch,
    DocumentOut,
    PassageOut,
    SearchOut,
    SearchRequest,
    UrlDocumentCreate,
)
from papo.knowledge.service import KnowledgeService, document_blob_key, embed_question
from papo.runtime import current_runtime
from papo.settings import Settings


class KnowledgeRuntime(Protocol):
    settings: Settings
    blobs: BlobStore
    knowledge: KnowledgeIndexer


State = Annotated[KnowledgeRuntime, Depends(current_runtime)]
router = APIRouter(prefix="/api/v1/knowledge", tags=["knowledge"])


async def store_document(
    knowledge: KnowledgeService,
    blobs: BlobStore,
    settings: Settings,
    collection_id: uuid.UUID,
    file: UploadFile,
    title: str | None,
) -> KnowledgeDocument:
    """An uploaded file into the blob store and the collection, pending indexing (the caller wakes
    the indexer once committed); nothing is kept when it is refused."""
    document_id = knowledge.new_document_id()
    key = document_blob_key(knowledge.tenant_id, document_id)

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await file.read(READ_CHUNK):
            yield chunk

    limit = settings.knowledge_max_bytes
    try:
        written = await blobs.write(key, chunks(), max_bytes=limit)
    except BlobTooLarge as exc:
        raise PayloadTooLarge(f"a document may have at most {limit} bytes") from exc
    try:
        return await knowledge.add_upload(
            collection_id, document_id, written, file_name=file.filename, mime_type=file.content_type, title=title
        )
    except BaseException:
        await blobs.delete(key)  # refused: no file kept without its row
        raise


async def knowledge_service(session: DbSession, principal: CurrentPrincipal, state: State) -> KnowledgeService:
    return KnowledgeService(session, principal, state.settings)


Knowledge = Annotated[KnowledgeService, Depends(knowledge_service)]


async def writable_collection(collection_id: uuid.UUID, knowledge: Knowledge) -> uuid.UUID:
    """A collection the caller may add to: 403 or 404 before any upload is looked at."""
    knowledge.require_writer()
    await knowledge.require_collection(collection_id)
    return collection_id


WritableCollection = Annotated[uuid.UUID, Depends(writable_collection)]


@router.get("/collections", response_model=list[CollectionOut])
async def list_collections(knowledge: Knowledge) -> list[CollectionOut]:
    return await knowledge.collections()


@router.post("/collections", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
async def create_collection(body: CollectionCreate, knowledge: Knowledge) -> CollectionOut:
    return await knowledge.create_collection(body.name, body.description)


@router.get("/collections/{collection_id}", response_model=CollectionOut)
async def get_collection(collection_id: uuid.UUID, knowledge: Knowledge) -> CollectionOut:
    return await knowledge.collection(collection_id)


@router.patch("/collections/{collection_id}", response_model=CollectionOut)
async def update_collection(collection_id: uuid.UUID, body: CollectionPatch, knowledge: Knowledge) -> CollectionOut:
    return await knowledge.update_collection(collection_id, body.model_dump(exclude_none=True))


@router.delete("/collections/{collection_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_collection(collection_id: uuid.UUID, knowledge: Knowledge) -> Response:
    await knowledge.delete_collection(collection_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/collections/{collection_id}/documents", response_model=list[DocumentOut])
async def list_documents(collection_id: uuid.UUID, knowledge: Knowledge) -> list[DocumentOut]:
    return [DocumentOut.model_validate(row) for row in await knowledge.documents(collection_id)]


@router.post("/collections/{collection_id}/documents", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentOut)
async def upload_document(
    collection_id: WritableCollection,
    knowledge: Knowledge,
    session: DbSession,
    state: State,
    background: BackgroundTasks,
    file: Annotated[UploadFile, File(description="PDF, DOCX, HTML, Markdown, plain text or CSV")],
    title: Annotated[str, Form(max_length=300)] = "",
) -> DocumentOut:
    """Store a file and queue it for indexing (202): its `state` goes pending → indexing → ready, or
    failed with the reason in `error`."""
    document = await store_document(knowledge, state.blobs, state.settings, collection_id, file, title.strip() or None)
    after_commit(session, state.knowledge.wake)
    return DocumentOut.model_validate(document)


@router.post("/collections/{collection_id}/urls", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentOut)
async def add_url(
    collection_id: WritableCollection, body: UrlDocumentCreate, knowledge: Knowledge, session: DbSession, state: State
) -> DocumentOut:
    """A web page to fetch and index (outbound rules: public addresses only, redirects included)."""
    document = await knowledge.add_url(collection_id, body.url, body.title, state.knowledge.guard)
    after_commit(session, state.knowledge.wake)
    return DocumentOut.model_validate(document)


@router.get("/documents/{document_id}", response_model=DocumentOut)
async def get_document(document_id: uuid.UUID, knowledge: Knowledge) -> DocumentOut:
    return DocumentOut.model_validate(await knowledge.document(document_id))


@router.post("/documents/{document_id}/reindex", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentOut)
async def reindex_document(
    document_id: uuid.UUID, knowledge: Knowledge, session: DbSession, state: State
) -> DocumentOut:
    document = await knowledge.reindex(document_id)
    after_commit(session, state.knowledge.wake)
    return DocumentOut.model_validate(document)


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(document_id: uuid.UUID, knowledge: Knowledge) -> Response:
    await knowledge.delete_document(document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/search", response_model=SearchOut)
async def search(body: SearchRequest, knowledge: Knowledge, state: State) -> SearchOut:
    """The passages that best answer `query`, from the collections named, or those attached to
    `assistant_id` (what that assistant would be shown), best first."""
    if body.collection_ids is None and body.assistant_id is None:
        raise InvalidInput("name collection_ids or an assistant_id", field="collection_ids")
    if body.collection_ids is not None:
        collection_ids = body.collection_ids
    else:
        assert body.assistant_id is not None
        collection_ids = await knowledge.assistant_collections(body.assistant_id)
    indexer = state.knowledge
    try:
        model, vector = await embed_question(indexer.embedder, indexer.vectors, body.query)
    except EmbeddingError as exc:
        raise Unavailable(f"{exc}; try again") from exc
    found = await knowledge.search(body.query, collection_ids, body.limit, model=model, vector=vector)
    return SearchOut(
        passages=[
            PassageOut(
                document_id=item.hit.document_id,
                collection_id=item.hit.collection_id,
                title=item.hit.title,
                page=item.hit.page,
                ordinal=item.hit.ordinal,
                content=item.hit.content,
                score=item.hit.score,
                similarity=item.hit.similarity,
                matched_words=item.hit.matched_words,
                relevant=item.relevant,
                url=item.hit.url,
                file_name=item.hit.file_name,
            )
            for item in found
        ],
        retrieval="vector+text" if indexer.vectors else "text",
        embedder=indexer.embedder.model if indexer.vectors else "none",
    )


# ---- files in a chat ----------------------------------------------------------------------------


class ChatFilesRuntime(ChatRuntime, Protocol):
    blobs: BlobStore


FilesState = Annotated[ChatFilesRuntime, Depends(current_runtime)]
files_router = APIRouter(prefix="/api/v1/sessions", tags=["chat"])


async def own_chat(session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> uuid.UUID:
    """One of the caller's chats: 404 before any upload is looked at."""
    await chat.require_chat_session(session_id, principal.require_user())
    return session_id


OwnChat = Annotated[uuid.UUID, Depends(own_chat)]


class FileMessageOut(MessageOut):
    attachments: list[AttachmentOut]


@files_router.post(
    "/{session_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=FileMessageOut,
    dependencies=[MessageAllowance],
)
async def send_file(
    session_id: OwnChat,
    chat: Chat,
    principal: CurrentPrincipal,
    session: DbSession,
    state: FilesState,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    file: Annotated[
        UploadFile,
        File(description="A photo (JPEG, PNG, GIF, WebP) or a document (PDF, DOCX, HTML, Markdown, text, CSV)"),
    ],
    content: Annotated[str, Form(max_length=32_000, description="Text sent with the file")] = "",
) -> dict[str, Any]:
    """Send a file in one of your chats, with optional text. In a chat with an assistant it starts a
    reply (`X-Reply-Id`) like a text message: a photo is shown to a model that takes images (the
    assistant's `accepts_images`), a document's passages are what the reply answers from and cites.
    413 over the size limit or the company's storage quota, 415 for other types; nothing is kept."""
    attachments = Attachments(session, principal)
    stored = await store_chat_file(state.blobs, state.settings, attachments, file)
    try:
        text = content.strip() or stored.part.file_name or stored.part.kind
        posted = await state.conversations.post(chat, session_id, MessageRole.user, text, None)
        row = await attachments.add_stored({"id": posted.message.id, "session_id": session_id}, stored)
        await schedule(background, state, request, principal, posted.reply, response)
    except BaseException:
        await state.blobs.delete(stored.key)  # refused: no file kept without its message
        raise
    return MessageOut.model_validate(posted.message).model_dump() | {"attachments": [attachment_view(row)]}
