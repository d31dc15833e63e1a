"""The end user's pages: the chat dashboard, a conversation, and the HTML of one finished message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Response
from fastapi.responses import JSONResponse
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field

from papo.assistants.service import AssistantService
from papo.auth.deps import CurrentPrincipal, DbSession
from papo.chat.api import ChatRuntime, schedule
from papo.chat.attachments import Attachments, attachment_view
from papo.chat.models import Channel, MessageRole, SessionStatus
from papo.chat.schemas import MessageOut
from papo.chat.service import ChatService
from papo.runtime import current_runtime
from papo.web import markdown
from papo.web.pages import Member, MemberForm, Page, State, WebRuntime, not_found, redirect, render

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


def chat_service(session: Any, page: Page, state: WebRuntime) -> ChatService:
    return ChatService(session, page.member, state.settings)


def message_view(message: Any) -> dict[str, Any]:
    out = MessageOut.model_validate(message).model_dump(mode="json")
    # nh3 has removed every tag, attribute and scheme that could run script
    out["html"] = Markup(markdown.render(message.content)) if message.role == "assistant" else None  # noqa: S704
    return out


def tool_calls_before_their_replies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A reply's tool calls are stored after the reply's row (its placeholder is created first) but
    were made before it was written: they are shown above the reply they fed."""

    def reply_of(message: dict[str, Any]) -> str | None:
        return str((message.get("metadata") or {}).get("reply_id") or "") if message["role"] == "tool" else None

    present = {str(m["id"]) for m in messages}
    calls: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        reply = reply_of(message)
        if reply in present:
            calls.setdefault(reply, []).append(message)
    ordered: list[dict[str, Any]] = []
    for message in messages:
        if reply_of(message) not in present:
            ordered += calls.get(str(message["id"]), [])
            ordered.append(message)
    return ordered


async def chat_list(page: Page, chat: ChatService, status: str, cursor: str | None = None) -> dict[str, Any]:
    listing = SessionStatus.archived if status == "archived" else SessionStatus.active
    rows, next_cursor = await chat.get_chat_sessions(page.user_id, listing, limit=PAGE_SIZE, cursor=cursor)
    previews = await chat.previews([r.id for r in rows])
    now = datetime.now(UTC)
    chats = [
        {
            "id": r.id,
            "title": r.title,
            "preview": previews.get(r.id, ""),
            "when": page.t.ago(r.last_message_at or r.created_at, now),
            "when_iso": (r.last_message_at or r.created_at).isoformat(),
        }
        for r in rows
    ]
    return {"chats": chats, "next_cursor": next_cursor, "status": listing.value}


@router.get("/")
async def dashboard(
    page: Member, state: State, session: DbSession, status: str = "active", cursor: str | None = None
) -> Response:
    listing = await chat_list(page, chat_service(session, page, state), status, cursor)
    return render(page, state, "dashboard.html", current=None, **listing)


class HomeRuntime(WebRuntime, ChatRuntime, Protocol):
    pass


@router.post("/chats")
async def new_chat(
    page: MemberForm,
    state: Annotated[HomeRuntime, Depends(current_runtime)],
    session: DbSession,
    background: BackgroundTasks,
    content: Annotated[str, Form(max_length=32_000)] = "",
) -> Response:
    """A new chat; from the home page's message box, with its first message (and the reply started)."""
    assistant_id = await AssistantService(session, page.member, state.settings, state.keys).default_id()
    chat = chat_service(session, page, state)
    created = await chat.create_chat_session(page.user_id, channel=Channel.web, assistant_id=assistant_id)
    if content.strip():
        await state.limiter.messages(page.request, page.member)
        posted = await state.conversations.post(chat, created.id, MessageRole.user, content.strip(), None)
        await schedule(background, state, page.request, page.member, posted.reply)
    return redirect(page, state, f"/chats/{created.id}")


@router.get("/chats/{session_id}")
async def chat_page(
    session_id: uuid.UUID, page: Member, state: State, session: DbSession, versions: bool = False
) -> Response:
    """The conversation; with `versions=1`, earlier versions (regenerated or edited) are shown too."""
    chat = chat_service(session, page, state)
    found = await chat.get_chat_session(session_id, page.user_id)
    if found is None:
        return not_found(page, state)
    history = await chat.get_messages(session_id, page.user_id, latest=True, limit=100, include_superseded=versions)
    files = await Attachments(session, page.member).for_messages([m.id for m in history.items])
    messages = tool_calls_before_their_replies(
        [message_view(m) | {"attachments": [attachment_view(a) for a in files.get(m.id, [])]} for m in history.items]
    )
    listing = await chat_list(page, chat, "active")
    return render(
        page,
        state,
        "chat.html",
        chat=found,
        messages=messages,
        has_more=history.has_more,
        current=found.id,
        versions=versions,
        **listing,
    )


@router.get("/web/chats/{session_id}/messages/{message_id}")
async def message_fragment(
    session_id: uuid.UUID, message_id: uuid.UUID, principal: CurrentPrincipal, session: DbSession, state: State
) -> JSONResponse:
    """A message with its safe HTML, for the script to swap in once a streamed reply is complete."""
    chat = ChatService(session, principal, state.settings)
    message = await chat.get_message(session_id, message_id, principal.require_user())
    view = message_view(message)
    view["html"] = str(view["html"]) if view["html"] is not None else None
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


class MarkdownIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=markdown.MAX_RENDERED_CHARS)


@router.post("/web/markdown")
async def render_markdown(body: MarkdownIn, principal: CurrentPrincipal) -> JSONResponse:
    """A reply still being written, as the same safe HTML its final render will be (the script asks
    for it a few times a second while a reply streams, so markdown never shows raw)."""
    principal.require_user()
    return JSONResponse({"html": markdown.render(body.text)}, headers={"Cache-Control": "no-store"})
