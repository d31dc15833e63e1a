"""Seed 000's endpoints, exactly as the seed writes them (/api/chat/...)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, BackgroundTasks, Request, status

from papo.auth.deps import CurrentPrincipal
from papo.chat.api import Chat, MessageAllowance, ReadChat, State, schedule
from papo.chat.caching import CONDITIONAL, CONDITIONAL_READ
from papo.chat.models import Channel, MessageRole
from papo.chat.schemas import LegacyDeleted, LegacyMessageCreate, LegacySessionCreate, MessageOut, SessionOut

router = APIRouter(prefix="/api/chat", tags=["seed 000"])


@router.post("/session", status_code=status.HTTP_201_CREATED, response_model=SessionOut)
async def create_session(
    chat: Chat, principal: CurrentPrincipal, state: State, body: LegacySessionCreate | None = None
) -> SessionOut:
    """A chat bound to the tenant's default assistant (another with `assistant_id`, none with null),
    so `POST /api/chat/message` gets a reply."""
    body = body or LegacySessionCreate()
    created = await chat.create_chat_session(
        principal.require_user(),
        body.title,
        channel=Channel.web,
        assistant_id=await state.conversations.resolve_assistant(chat, body.assistant_id),
    )
    return SessionOut.model_validate(created)


@router.get("/session", response_model=list[SessionOut], **CONDITIONAL)
async def list_active_sessions(chat: Chat, principal: CurrentPrincipal) -> list[SessionOut]:
    rows, _ = await chat.get_chat_sessions(principal.require_user())
    return [SessionOut.model_validate(row) for row in rows]


@router.delete("/session", response_model=LegacyDeleted)
async def delete_session(id: uuid.UUID, chat: Chat, principal: CurrentPrincipal) -> LegacyDeleted:
    await chat.delete_chat_session(id, principal.require_user())
    return LegacyDeleted()


@router.post(
    "/message", status_code=status.HTTP_201_CREATED, response_model=MessageOut, dependencies=[MessageAllowance]
)
async def send_message(
    body: LegacyMessageCreate,
    chat: Chat,
    principal: CurrentPrincipal,
    state: State,
    request: Request,
    background: BackgroundTasks,
) -> MessageOut:
    principal.require_user()
    posted = await state.conversations.post(chat, body.sessionId, MessageRole.user, body.message, None)
    await schedule(background, state, request, principal, posted.reply)
    return MessageOut.model_validate(posted.message)


@router.get("/message", response_model=list[MessageOut], **CONDITIONAL_READ)
async def message_history(sessionId: uuid.UUID, chat: ReadChat, principal: CurrentPrincipal) -> list[MessageOut]:
    page = await chat.get_messages(sessionId, principal.require_user(), limit=None)
    return [MessageOut.model_validate(m) for m in page.items]
