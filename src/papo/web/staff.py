"""Company staff's pages: the WhatsApp inbox (agents and admins) and the numbers (admins)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from papo.auth import tenant_settings
from papo.auth.deps import DbSession
from papo.chat.service import ChatService
from papo.errors import NotFound
from papo.web.chats import tool_calls_before_their_replies
from papo.web.pages import Admin, Staff, State, not_found, render
from papo.whatsapp.inbox import INBOX_VIEWS, TICKET_STATUSES, Inbox
from papo.whatsapp.rows import session_out
from papo.whatsapp.service import SessionService
from papo.whatsapp.teams import Teams

router = APIRouter(include_in_schema=False)


@router.get("/inbox")
@router.get("/inbox/{conversation_id}")
async def inbox_page(
    page: Staff,
    state: State,
    session: DbSession,
    conversation_id: uuid.UUID | None = None,
    ticket: str = "open",
    view: str = "all",
    label: str | None = None,
    q: str = "",
) -> Response:
    box = Inbox(session, page.member)
    ticket = ticket if ticket in TICKET_STATUSES else "open"
    view = view if view in INBOX_VIEWS else "all"
    current = messages = None
    assignee = None
    earlier: list[dict[str, object]] = []
    if conversation_id is not None:
        try:
            current = await box.conversation(conversation_id)
            messages = tool_calls_before_their_replies(await box.messages(conversation_id))
            await box.read(conversation_id)
        except NotFound:
            return not_found(page, state)
        if current["assigned_to"]:
            members = {m.user_id: m.email for m in await tenant_settings.staff(session, page.member)}
            assignee = members.get(current["assigned_to"])
        earlier = await ChatService(session, page.member, state.settings).earlier_conversations(conversation_id, "")
    return render(
        page,
        state,
        "inbox.html",
        conversations=await box.conversations(None if q.strip() else ticket, view, label or None, q[:200]),
        q=q[:200],
        ticket=ticket,
        view=view,
        label=label or None,
        current=current,
        messages=messages or [],
        assignee=assignee,
        earlier=earlier,
        teams=await Teams(session, page.member).all(),
    )


@router.get("/whatsapp")
async def whatsapp_page(page: Admin, state: State, session: DbSession) -> Response:
    rows = await SessionService(session, page.member, state.whatsapp).find_all_by_company()
    return render(page, state, "whatsapp.html", sessions=[session_out(row) for row in rows])
