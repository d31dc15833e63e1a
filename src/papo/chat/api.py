"""Versioned REST API for chat sessions and messages (/api/v1)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from papo.auth.deps import CurrentPrincipal, DbSession, ReadSession, authenticated_unit
from papo.auth.invitations import Accounts
from papo.auth.models import Role
from papo.auth.principal_cache import PrincipalCache
from papo.auth.service import Principal
from papo.chat.caching import CONDITIONAL, CONDITIONAL_READ
from papo.chat.export import MEDIA_TYPES, ExportFormat, stream_export
from papo.chat.export import filename as export_filename
from papo.chat.models import SessionStatus
from papo.chat.post_lane import LIMIT_SPENT
from papo.chat.replies import AnsweredChats, PendingReply, ReplyPolicy, ReplyRunner
from papo.chat.schemas import (
    ChatCreate,
    MessageCreate,
    MessageEdit,
    MessageOut,
    MessagePage,
    MessagePatch,
    SearchHit,
    SearchPage,
    SessionCreate,
    SessionOut,
    SessionPage,
    SessionPatch,
    SupportSessionOut,
    SupportSessionPage,
)
from papo.chat.search import search_messages
from papo.chat.service import MAX_PAGE, ChatService, message_cursor
from papo.db.engine import Database
from papo.errors import BadRequest
from papo.ops.ratelimit import RateLimiter
from papo.runtime import current_runtime, running
from papo.settings import Settings


class ChatRuntime(Protocol):
    settings: Settings
    db: Database
    limiter: RateLimiter
    accounts: Accounts
    principals: PrincipalCache
    answered_chats: AnsweredChats

    @property
    def reads(self) -> Database: ...

    @property
    def replies(self) -> ReplyRunner: ...

    @property
    def conversations(self) -> ReplyPolicy: ...


State = Annotated[ChatRuntime, Depends(current_runtime)]
router = APIRouter(prefix="/api/v1", tags=["chat"])


async def chat_service(request: Request, session: DbSession, principal: CurrentPrincipal) -> ChatService:
    state: ChatRuntime = running(request)  # not a dependency: see papo.auth.deps.current_principal
    return ChatService(session, principal, state.settings)


Chat = Annotated[ChatService, Depends(chat_service)]


async def read_chat_service(session: ReadSession, principal: CurrentPrincipal, state: State) -> ChatService:
    return ChatService(session, principal, state.settings)


# Reads only (history): on the read replica when there is one.
ReadChat = Annotated[ChatService, Depends(read_chat_service)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


@router.post("/sessions", status_code=status.HTTP_201_CREATED, response_model=SessionOut)
async def create_session(body: SessionCreate, chat: Chat, principal: CurrentPrincipal, state: State) -> SessionOut:
    created = await chat.create_chat_session(
        principal.require_user(),
        body.title,
        metadata=body.metadata,
        channel=body.channel,
        assistant_id=await state.conversations.resolve_assistant(chat, body.assistant_id),
    )
    return SessionOut.model_validate(created)


@router.get("/sessions", response_model=SessionPage, **CONDITIONAL)
async def list_sessions(
    chat: Chat,
    principal: CurrentPrincipal,
    status: Annotated[SessionStatus, Query()] = SessionStatus.active,
    limit: Limit = 50,
    cursor: str | None = None,
) -> SessionPage:
    if status == SessionStatus.deleted:
        raise BadRequest("deleted sessions are not listed")
    rows, next_cursor = await chat.get_chat_sessions(principal.require_user(), status, limit=limit, cursor=cursor)
    previews = await chat.previews([r.id for r in rows])
    items = [SessionOut.model_validate(r).model_copy(update={"preview": previews.get(r.id)}) for r in rows]
    return SessionPage(items=items, next_cursor=next_cursor)


@router.get("/sessions/{session_id}", response_model=SessionOut, **CONDITIONAL)
async def get_session(session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> SessionOut:
    return SessionOut.model_validate(await chat.require_chat_session(session_id, principal.require_user()))


@router.patch("/sessions/{session_id}", response_model=SessionOut)
async def patch_session(
    session_id: uuid.UUID, body: SessionPatch, chat: Chat, principal: CurrentPrincipal, state: State
) -> SessionOut:
    updated = await chat.update_chat_session(
        session_id,
        principal.require_user(),
        title=body.title,
        metadata=body.metadata,
        status=body.status,
        fields=body.model_fields_set,
        assistant_id=await state.conversations.resolve_assistant(chat, body.assistant_id),
    )
    return SessionOut.model_validate(updated)


@router.post("/sessions/{session_id}/archive", response_model=SessionOut)
async def archive_session(session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> SessionOut:
    return SessionOut.model_validate(await chat.archive_chat_session(session_id, principal.require_user()))


@router.post("/sessions/{session_id}/unarchive", response_model=SessionOut)
async def unarchive_session(session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> SessionOut:
    return SessionOut.model_validate(await chat.unarchive_chat_session(session_id, principal.require_user()))


@router.post("/sessions/{session_id}/restore", response_model=SessionOut)
async def restore_session(session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> SessionOut:
    """Undo a delete: a soft-deleted chat comes back as active until the retention purge."""
    return SessionOut.model_validate(await chat.restore_chat_session(session_id, principal.require_user()))


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(
    session_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal, purge: bool = False
) -> Response:
    await chat.delete_chat_session(session_id, principal.require_user(), purge=purge)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def message_allowance(request: Request, principal: CurrentPrincipal) -> None:
    """The caller's message rate (429 before anything is written)."""
    state: ChatRuntime = running(request)  # not a dependency: see papo.auth.deps.current_principal
    await state.limiter.messages(request, principal)


MessageAllowance = Depends(message_allowance)


async def schedule(
    background: BackgroundTasks,
    state: ChatRuntime,
    request: Request,
    principal: Principal,
    reply: PendingReply | None,
    response: Response | None = None,
) -> None:
    """Generate a reply created by this request (background tasks run after its transaction committed),
    and name it in the `X-Reply-Id` header. Over the caller's AI reply limit, the request fails with
    429 and its transaction, message included, is rolled back."""
    if reply is None:
        return
    await state.limiter.ai_reply(request, principal)
    background.add_task(state.replies.spawn, principal, reply.session_id, reply.reply_id, reply.assistant_id)
    if response is not None:
        response.headers["X-Reply-Id"] = str(reply.reply_id)


@router.post("/sessions/{session_id}/messages", status_code=status.HTTP_201_CREATED, response_model=MessageOut)
async def send_message(
    session_id: uuid.UUID, body: MessageCreate, request: Request, response: Response, background: BackgroundTasks
) -> MessageOut:
    """Store a message. In a chat with an assistant, a user message also starts the assistant's reply:
    its id is in the `X-Reply-Id` header, and it streams through the realtime events (`reply.delta`).
    While a reply is being written, another user message is refused with 409: stop it or wait."""
    # Most of these POSTs are answered before they get here (papo.chat.post_lane); this handler
    # opens its unit itself so that one that was handed over keeps the lane's order of checks.
    state: ChatRuntime = running(request)
    async with authenticated_unit(request) as (session, principal):
        if not getattr(request.state, LIMIT_SPENT, False):
            await state.limiter.messages(request, principal)
        principal.require_user()
        chat = ChatService(session, principal, state.settings)
        posted = await state.conversations.post(chat, session_id, body.role, body.content, body.metadata)
        if posted.reply is not None:
            state.answered_chats.add(session_id)
        await schedule(background, state, request, principal, posted.reply, response)
    return MessageOut.model_validate(posted.message)


@router.post(
    "/sessions/{session_id}/regenerate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageOut,
    tags=["assistants"],
)
async def regenerate(
    session_id: uuid.UUID,
    chat: Chat,
    principal: CurrentPrincipal,
    state: State,
    request: Request,
    background: BackgroundTasks,
) -> MessageOut:
    """Write the last reply again (also: retry one that failed). The previous reply is kept, superseded."""
    placeholder, reply = await state.conversations.regenerate(chat, session_id, principal.require_user())
    await schedule(background, state, request, principal, reply)
    return MessageOut.model_validate(placeholder)


@router.post(
    "/sessions/{session_id}/messages/{message_id}/edit",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    tags=["assistants"],
    dependencies=[MessageAllowance],
)
async def edit_and_resend(
    session_id: uuid.UUID,
    message_id: uuid.UUID,
    body: MessageEdit,
    chat: Chat,
    principal: CurrentPrincipal,
    state: State,
    request: Request,
    response: Response,
    background: BackgroundTasks,
) -> MessageOut:
    """Replace one of your messages with a new version and continue from it. The old version and what
    followed it stay readable as a superseded branch (`?include_superseded=true`)."""
    posted = await state.conversations.edit_and_resend(
        chat, session_id, message_id, principal.require_user(), body.content
    )
    await schedule(background, state, request, principal, posted.reply, response)
    return MessageOut.model_validate(posted.message)


@router.post("/sessions/{session_id}/messages/{message_id}/stop", response_model=MessageOut, tags=["assistants"])
async def stop_reply(
    session_id: uuid.UUID,
    message_id: uuid.UUID,
    chat: Chat,
    principal: CurrentPrincipal,
    state: State,
    background: BackgroundTasks,
) -> MessageOut:
    """Stop a reply mid-stream; it keeps what was already written and is marked stopped."""
    live_text = state.replies.text_so_far(message_id)
    stopped = await chat.stop_reply(session_id, message_id, principal.require_user(), live_text)
    background.add_task(state.replies.halt, message_id)  # after the stop committed (and was authorised)
    return MessageOut.model_validate(stopped)


@router.get("/sessions/{session_id}/messages", response_model=MessagePage, **CONDITIONAL_READ)
async def list_messages(
    session_id: uuid.UUID,
    chat: ReadChat,
    principal: CurrentPrincipal,
    after: str | None = None,
    before: str | None = None,
    latest: Annotated[bool, Query(description="Without a cursor, start from the newest page.")] = False,
    include_superseded: Annotated[
        bool, Query(description="Also the versions replaced by regenerate or edit (older branches).")
    ] = False,
    limit: Limit = 50,
) -> MessagePage:
    if after is not None and before is not None:
        raise BadRequest("give `after` or `before`, not both")
    page = await chat.get_messages(
        session_id,
        principal.require_user(),
        after=after,
        before=before,
        latest=latest,
        limit=limit,
        include_superseded=include_superseded,
    )
    items = [MessageOut.model_validate(m) for m in page.items]
    return MessagePage(
        items=items,
        next_cursor=message_cursor(page.items[-1]) if page.items else after,
        prev_cursor=message_cursor(page.items[0]) if page.items else before,
        has_more=page.has_more,
    )


@router.get("/sessions/{session_id}/messages/{message_id}", response_model=MessageOut)
async def get_message(
    session_id: uuid.UUID, message_id: uuid.UUID, chat: Chat, principal: CurrentPrincipal
) -> MessageOut:
    return MessageOut.model_validate(await chat.get_message(session_id, message_id, principal.require_user()))


@router.patch("/sessions/{session_id}/messages/{message_id}", response_model=MessageOut)
async def patch_message(
    session_id: uuid.UUID, message_id: uuid.UUID, body: MessagePatch, chat: Chat, principal: CurrentPrincipal
) -> MessageOut:
    message = await chat.update_message(
        session_id, message_id, principal.require_user(), status=body.status, metadata=body.metadata
    )
    return MessageOut.model_validate(message)


@router.post("/chats", status_code=status.HTTP_201_CREATED, response_model=SessionOut, tags=["back-office"])
async def create_chat_for_user(
    body: ChatCreate, chat: Chat, session: DbSession, principal: CurrentPrincipal, state: State
) -> SessionOut:
    """Open a chat for a member of the caller's tenant, by user id or e-mail (tenant API key or admin).
    With `create_user`, an e-mail that is not a member yet is invited (the chat waits for them)."""

    async def invite(email: str) -> str:
        invitation = await state.accounts.invite(session, principal, email, Role.member)
        invitee: str = invitation.user_id
        return invitee

    created = await chat.open_chat_for_member(
        user_id=body.user.id,
        email=body.user.email,
        title=body.title,
        metadata=body.metadata,
        invite=invite if body.create_user else None,
        assistant_id=await state.conversations.resolve_assistant(chat, body.assistant_id),
    )
    return SessionOut.model_validate(created)


@router.get("/admin/sessions", response_model=SupportSessionPage, tags=["admin"])
async def support_sessions(
    chat: Chat,
    user_id: str | None = None,
    status: SessionStatus | None = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> SupportSessionPage:
    """Tenant admins: the tenant's chats for support (who, when, state), without their content."""
    rows, next_cursor = await chat.list_tenant_sessions(user_id=user_id, status=status, limit=limit, cursor=cursor)
    return SupportSessionPage(items=[SupportSessionOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/search", response_model=SearchPage, tags=["search"])
async def search(
    q: Annotated[str, Query(description="Words to find; quotes, `or` and `-word` work as on the web.")],
    session: ReadSession,
    principal: CurrentPrincipal,
    limit: Limit = 20,
    cursor: str | None = None,
) -> SearchPage:
    hits, next_cursor = await search_messages(
        session, principal.tenant_id, principal.require_user(), q, limit=limit, cursor=cursor
    )
    return SearchPage(items=[SearchHit(**vars(hit)) for hit in hits], next_cursor=next_cursor)


def _export_response(state: ChatRuntime, principal: Principal, fmt: ExportFormat, session_id: uuid.UUID | None) -> Any:
    return StreamingResponse(
        stream_export(state.reads, principal, fmt, session_id),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{export_filename(fmt, session_id)}"'},
    )


@router.get("/sessions/{session_id}/export", tags=["export"], response_class=StreamingResponse)
async def export_session(
    session_id: uuid.UUID,
    chat: Chat,
    principal: CurrentPrincipal,
    state: State,
    format: ExportFormat = ExportFormat.json,
) -> Any:
    await chat.require_chat_session(session_id, principal.require_user())
    return _export_response(state, principal, format, session_id)


@router.get("/export", tags=["export"], response_class=StreamingResponse)
async def export_all(principal: CurrentPrincipal, state: State, format: ExportFormat = ExportFormat.json) -> Any:
    principal.require_user()
    return _export_response(state, principal, format, None)
