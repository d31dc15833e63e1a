"""A tenant admin's knowledge base: collections, their documents (uploaded or fetched from a URL,
with their indexing state), and which collections each assistant answers from."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, File, Response, UploadFile

from papo.assistants.service import AssistantService
from papo.auth.deps import DbSession
from papo.blobs import BlobStore
from papo.db.engine import after_commit
from papo.errors import DomainError, InvalidInput, NotFound
from papo.knowledge.api import store_document
from papo.knowledge.indexer import KnowledgeIndexer
from papo.knowledge.service import KnowledgeService
from papo.runtime import current_runtime
from papo.web.pages import Admin, AdminForm, Page, WebRuntime, afresh, redirect, render

router = APIRouter(include_in_schema=False)
PAGE = "/settings/knowledge"


class KnowledgePagesRuntime(WebRuntime, Protocol):
    blobs: BlobStore
    knowledge: KnowledgeIndexer


State = Annotated[KnowledgePagesRuntime, Depends(current_runtime)]


async def _page(
    page: Page, state: KnowledgePagesRuntime, session: Any, status_code: int = 200, **values: Any
) -> Response:
    knowledge = KnowledgeService(session, page.member, state.settings)
    collections: list[dict[str, Any]] = []
    for collection in await knowledge.collections():
        collections.append({"collection": collection, "documents": await knowledge.documents(collection.id)})
    assistants = [
        {"assistant": assistant, "collection_ids": set(await knowledge.assistant_collections(assistant.id))}
        for assistant in await AssistantService(session, page.member, state.settings, state.keys).list()
    ]
    working = any(d.state in ("pending", "indexing") for c in collections for d in c["documents"])
    return render(
        page,
        state,
        "knowledge.html",
        status_code=status_code,
        collections=collections,
        assistants=assistants,
        working=working,
        retrieval=state.knowledge.mode(),
        **{"notice": None, "error": None, **values},
    )


async def _acted(page: Page, state: KnowledgePagesRuntime, session: Any, action: Any, notice: str) -> Response:
    """Run a change; on a refusal, the page again with the reason (and the refusal's status)."""
    try:
        await action()
    except DomainError as exc:
        async with afresh(page, state, session) as fresh:
            return await _page(page, state, fresh, status_code=exc.status, error=exc.detail)
    after_commit(session, state.knowledge.wake)
    return redirect(page, state, f"{PAGE}?done={notice}")


@router.get(PAGE)
async def knowledge_page(page: Admin, state: State, session: DbSession) -> Response:
    done = page.request.query_params.get("done")
    notice = page.t(f"kb.done_{done}") if done in ("created", "deleted", "added", "reindexing", "saved") else None
    return await _page(page, state, session, notice=notice)


@router.post(f"{PAGE}/collections")
async def create_collection(page: AdminForm, state: State, session: DbSession) -> Response:
    form = await page.request.form()
    knowledge = KnowledgeService(session, page.member, state.settings)
    name, description = str(form.get("name", ""))[:200], str(form.get("description", ""))[:2000]
    return await _acted(page, state, session, lambda: knowledge.create_collection(name, description), "created")


@router.post(PAGE + "/collections/{collection_id}/delete")
async def delete_collection(collection_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    knowledge = KnowledgeService(session, page.member, state.settings)
    return await _acted(page, state, session, lambda: knowledge.delete_collection(collection_id), "deleted")


@router.post(PAGE + "/collections/{collection_id}/documents")
async def upload_document(
    collection_id: uuid.UUID,
    page: AdminForm,
    state: State,
    session: DbSession,
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    knowledge = KnowledgeService(session, page.member, state.settings)
    await knowledge.require_collection(collection_id)  # another tenant's collection: 404, file unread

    async def store() -> None:
        if file is None or not file.filename:
            raise InvalidInput(page.t("kb.choose_file"), field="file")
        await store_document(knowledge, state.blobs, state.settings, collection_id, file, None)

    return await _acted(page, state, session, store, "added")


@router.post(PAGE + "/collections/{collection_id}/urls")
async def add_url(collection_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    form = await page.request.form()
    knowledge = KnowledgeService(session, page.member, state.settings)
    url = str(form.get("url", ""))[:2000]
    return await _acted(
        page, state, session, lambda: knowledge.add_url(collection_id, url, None, state.knowledge.guard), "added"
    )


@router.post(PAGE + "/documents/{document_id}/{action}")
async def document_action(
    document_id: uuid.UUID, action: str, page: AdminForm, state: State, session: DbSession
) -> Response:
    knowledge = KnowledgeService(session, page.member, state.settings)
    if action == "delete":
        return await _acted(page, state, session, lambda: knowledge.delete_document(document_id), "deleted")
    if action == "reindex":
        return await _acted(page, state, session, lambda: knowledge.reindex(document_id), "reindexing")
    raise NotFound("no such action")


@router.post(PAGE + "/assistants/{assistant_id}")
async def assistant_collections(assistant_id: uuid.UUID, page: AdminForm, state: State, session: DbSession) -> Response:
    await AssistantService(session, page.member, state.settings, state.keys).get(assistant_id)  # or 404
    form = await page.request.form()
    knowledge = KnowledgeService(session, page.member, state.settings)
    try:
        chosen = [uuid.UUID(str(value)) for value in form.getlist("collection_ids")]
    except ValueError:
        return await _page(page, state, session, status_code=422, error=page.t("kb.bad_choice"))
    return await _acted(
        page, state, session, lambda: knowledge.set_assistant_collections(assistant_id, chosen), "saved"
    )
