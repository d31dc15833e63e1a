"""WhatsApp session endpoints: `/api/v1/whatsapp/sessions`, and the seed's `/session` paths as aliases
(the same router mounted twice). Staff read; owners and admins run the lifecycle. Another
company's session is a 404. Transport work runs after the request's transaction committed."""

from __future__ import annotations

import io
import uuid
from typing import Annotated, Any

import segno
from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)

from papo.auth.deps import CurrentPrincipal, DbSession
from papo.chat.attachments import Attachments
from papo.errors import Conflict, NotFound
from papo.whatsapp.canned import CannedResponses
from papo.whatsapp.inbox import Inbox
from papo.whatsapp.media import store_upload
from papo.whatsapp.models import CannedResponse, WhatsappSession
from papo.whatsapp.rows import session_out
from papo.whatsapp.schemas import (
    CannedIn,
    CannedOut,
    CleanupReport,
    ConversationOut,
    ConversationPatch,
    InboxMessageOut,
    NoteIn,
    QrOut,
    ReplyIn,
    SessionCreate,
    SessionDetails,
    SessionOut,
    SessionPatch,
    SessionStats,
    SyncChange,
    TeamIn,
    TeamMembersIn,
    TeamOut,
)
from papo.whatsapp.service import SessionService, State, WhatsappRuntime
from papo.whatsapp.status import SessionStatus
from papo.whatsapp.teams import Teams
from papo.whatsapp.transports.base import SessionKey

router = APIRouter(prefix="/api/v1/whatsapp/sessions", tags=["whatsapp"])


async def session_service(principal: CurrentPrincipal, session: DbSession, state: State) -> SessionService:
    principal.require_staff("WhatsApp sessions are for the company's staff")
    return SessionService(session, principal, state.whatsapp)


Sessions = Annotated[SessionService, Depends(session_service)]


def _later(background: BackgroundTasks, state: WhatsappRuntime, key: SessionKey, action: str) -> None:
    """After the commit: restart / stop / forget the session in whichever process runs it."""
    background.add_task(state.whatsapp.command, key, action)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionOut)
async def create_session(
    body: SessionCreate, sessions: Sessions, state: State, background: BackgroundTasks
) -> SessionOut:
    """Create the session and start connecting (a QR code follows as `whatsapp.session.updated`)."""
    row = await sessions.create(body)
    _later(background, state, SessionKey(row.tenant_id, row.id), "restart")
    return session_out(row)


@router.get("", response_model=list[SessionOut])
async def list_sessions(sessions: Sessions, include_inactive: bool = False) -> list[SessionOut]:
    return [session_out(row) for row in await sessions.find_all_by_company(include_inactive=include_inactive)]


@router.get("/stats", response_model=SessionStats)
async def stats(sessions: Sessions) -> SessionStats:
    return await sessions.stats()


@router.post("/cleanup", response_model=CleanupReport)
async def cleanup(sessions: Sessions, stale_days: Annotated[int, Query(ge=1, le=36500)] = 30) -> CleanupReport:
    """Deactivate sessions idle for `stale_days` and remove orphaned credential files (seed 004
    did this on GET; a change of state never answers GET here: a link or an image on any page could
    trigger it with the admin's cookie)."""
    return await sessions.cleanup_inactive_sessions_from_database(stale_days=stale_days)


@router.get("/cleanup", include_in_schema=False)
async def cleanup_by_get() -> None:
    # Without this, GET /cleanup would reach GET /{session_id} and answer 422.
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "clean-up changes state: use POST", {"Allow": "POST"})


@router.post("/sync", response_model=list[SyncChange])
async def sync(sessions: Sessions, session_id: uuid.UUID | None = None) -> list[SyncChange]:
    return await sessions.sync_session_status(session_id)


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(session_id: uuid.UUID, sessions: Sessions) -> SessionOut:
    return session_out(await sessions.find_one_by_company(session_id))


@router.patch("/{session_id}", response_model=SessionOut)
async def update_session(
    session_id: uuid.UUID, body: SessionPatch, sessions: Sessions, state: State, background: BackgroundTasks
) -> SessionOut:
    """Rename, reconfigure or change the assistant. A Cloud API number whose number or token changes
    is checked with the Graph API again (it receives the new number's webhooks once it answers)."""
    row, reverify = await sessions.update(session_id, body)
    if reverify:
        _later(background, state, SessionKey(row.tenant_id, row.id), "restart")
    return session_out(row)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_session(
    session_id: uuid.UUID, sessions: Sessions, state: State, background: BackgroundTasks
) -> Response:
    """Log out, delete the stored credentials and deactivate (the row stays for history)."""
    row = await sessions.remove(session_id)
    _later(background, state, SessionKey(row.tenant_id, row.id), "forget")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{session_id}/details", response_model=SessionDetails)
async def details(session_id: uuid.UUID, sessions: Sessions) -> dict[str, Any]:
    return await sessions.get_session_details(session_id)


@router.post("/{session_id}/restart", response_model=SessionOut, status_code=status.HTTP_202_ACCEPTED)
async def restart(session_id: uuid.UUID, sessions: Sessions, state: State, background: BackgroundTasks) -> SessionOut:
    """Reconnect (with the stored credentials when there are any, else a new QR code)."""
    sessions.principal.require_admin()
    row = await sessions.find_one_by_company(session_id)
    if not row.is_active:
        raise NotFound("this WhatsApp session was removed")
    _later(background, state, SessionKey(row.tenant_id, row.id), "restart")
    return session_out(row)


@router.post("/{session_id}/stop", response_model=SessionOut, status_code=status.HTTP_202_ACCEPTED)
async def stop(session_id: uuid.UUID, sessions: Sessions, state: State, background: BackgroundTasks) -> SessionOut:
    """Disconnect, keeping the credentials (restart reconnects without a QR scan)."""
    sessions.principal.require_admin()
    row = await sessions.find_one_by_company(session_id)
    _later(background, state, SessionKey(row.tenant_id, row.id), "stop")
    return session_out(row)


@router.get("/{session_id}/qr", response_model=QrOut)
async def qr_text(session_id: uuid.UUID, sessions: Sessions) -> QrOut:
    row = await sessions.qr(session_id)
    return QrOut(status=SessionStatus(row.status), qr_code=row.qr_code)


@router.get("/{session_id}/qr.{image_format}", response_class=Response)
async def qr_image(session_id: uuid.UUID, image_format: str, sessions: Sessions) -> Response:
    """The QR code to scan, as an SVG or PNG image (404 while there is none to scan)."""
    if image_format not in ("svg", "png"):
        raise NotFound("QR images are .svg or .png")
    row = await sessions.qr(session_id)
    if not row.qr_code:
        raise NotFound("no QR code to scan right now (see the session's status)")
    buffer = io.BytesIO()
    segno.make(row.qr_code, error="m").save(buffer, kind=image_format, scale=6, border=2)
    media_type = "image/svg+xml" if image_format == "svg" else "image/png"
    return Response(buffer.getvalue(), media_type=media_type, headers={"Cache-Control": "no-store"})


# ---- the inbox -------------------------------------------------------------------------------------

conversations_router = APIRouter(prefix="/api/v1/whatsapp/conversations", tags=["whatsapp"])


async def inbox(principal: CurrentPrincipal, session: DbSession) -> Inbox:
    principal.require_staff("the WhatsApp inbox is for the company's staff")
    return Inbox(session, principal)


InboxDep = Annotated[Inbox, Depends(inbox)]


async def conversation_number(conversation_id: uuid.UUID, box: InboxDep, session: DbSession) -> WhatsappSession:
    """The number a conversation the caller may see came in on (404 otherwise, before the body is
    looked at; 409 when the number was removed)."""
    number = await session.get(WhatsappSession, (box.principal.tenant_id, await box.number_of(conversation_id)))
    if number is None or not number.is_active:
        raise Conflict("the WhatsApp number of this conversation was removed")
    return number


ConversationNumber = Annotated[WhatsappSession, Depends(conversation_number)]


@conversations_router.get("", response_model=list[ConversationOut])
async def list_conversations(
    box: InboxDep,
    ticket_status: str | None = None,
    view: str = "all",
    label: str | None = None,
    q: str | None = None,
) -> list[dict[str, Any]]:
    """Newest activity first; filter by ticket (open, pending: waiting for an agent, closed), by
    view (`all`, `mine`: assigned to the caller, `team`: to the caller's teams, `unassigned`), by
    label and by `q` (the contact's
    name or number, or words said in the conversation). `unread` counts the customer's messages
    since the caller last read the conversation."""
    return await box.conversations(ticket_status, view, label, q)


@conversations_router.post("/{conversation_id}/read", status_code=status.HTTP_204_NO_CONTENT)
async def read_conversation(conversation_id: uuid.UUID, box: InboxDep) -> Response:
    """The caller has read the conversation up to now (its `unread` goes to 0 for them)."""
    await box.read(conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@conversations_router.post(
    "/{conversation_id}/notes", response_model=InboxMessageOut, status_code=status.HTTP_201_CREATED
)
async def add_note(conversation_id: uuid.UUID, body: NoteIn, box: InboxDep) -> dict[str, Any]:
    """A private note in the conversation (role `note`): the staff see it, the customer never gets it,
    and the bot's model is never shown it."""
    return await box.add_note(conversation_id, body.content)


teams_router = APIRouter(prefix="/api/v1/whatsapp/teams", tags=["whatsapp"])


def teams(principal: CurrentPrincipal, session: DbSession) -> Teams:
    return Teams(session, principal)


TeamsDep = Annotated[Teams, Depends(teams)]


@teams_router.get("", response_model=list[TeamOut])
async def list_teams(teams: TeamsDep) -> list[dict[str, Any]]:
    """The company's teams and their members (staff)."""
    return await teams.all()


@teams_router.post("", response_model=TeamOut, status_code=status.HTTP_201_CREATED)
async def create_team(body: TeamIn, teams: TeamsDep) -> dict[str, Any]:
    """A team conversations can be assigned to (owners, admins and API keys); 409 when the name exists."""
    team = await teams.create(body.name)
    return {"id": team.id, "name": team.name, "member_ids": [], "created_at": team.created_at}


@teams_router.put("/{team_id}/members", status_code=status.HTTP_204_NO_CONTENT)
async def set_team_members(team_id: uuid.UUID, body: TeamMembersIn, teams: TeamsDep) -> Response:
    """Replace the team's members: the company's owners, admins and agents."""
    await teams.set_members(team_id, body.user_ids)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@teams_router.delete("/{team_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_team(team_id: uuid.UUID, teams: TeamsDep) -> Response:
    """The team; its conversations stay, no longer assigned to a team."""
    await teams.delete(team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


canned_router = APIRouter(prefix="/api/v1/whatsapp/canned-responses", tags=["whatsapp"])


def canned_responses(principal: CurrentPrincipal, session: DbSession) -> CannedResponses:
    return CannedResponses(session, principal)


Canned = Annotated[CannedResponses, Depends(canned_responses)]


@canned_router.get("", response_model=list[CannedOut])
async def list_canned(canned: Canned) -> list[CannedResponse]:
    """The company's saved replies, by shortcut (staff)."""
    return await canned.list()


@canned_router.post("", response_model=CannedOut, status_code=status.HTTP_201_CREATED)
async def create_canned(body: CannedIn, canned: Canned) -> CannedResponse:
    """A saved reply agents type as `/shortcut` (owners, admins and API keys); 409 when the shortcut exists."""
    return await canned.create(body.shortcut, body.content)


@canned_router.delete("/{canned_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_canned(canned_id: uuid.UUID, canned: Canned) -> Response:
    await canned.delete(canned_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@conversations_router.get("/{conversation_id}/messages", response_model=list[InboxMessageOut])
async def conversation_messages(conversation_id: uuid.UUID, box: InboxDep) -> list[dict[str, Any]]:
    return await box.messages(conversation_id)


@conversations_router.patch("/{conversation_id}", response_model=ConversationOut)
async def update_conversation(conversation_id: uuid.UUID, body: ConversationPatch, box: InboxDep) -> dict[str, Any]:
    """Assign to an agent, close or reopen the ticket, hand the conversation back to the bot, or set its
    labels (lowercase words, at most 10)."""
    return await box.update(conversation_id, body.model_dump(exclude_unset=True))


@conversations_router.post(
    "/{conversation_id}/messages", response_model=InboxMessageOut, status_code=status.HTTP_201_CREATED
)
async def reply(
    conversation_id: uuid.UUID,
    body: ReplyIn,
    box: InboxDep,
    number: ConversationNumber,
    state: State,
    request: Request,
    background: BackgroundTasks,
) -> dict[str, Any]:
    """An agent's reply: stored first (delivery `pending`), then sent through the number's transport;
    the outcome (sent / failed with the reason) and later receipts arrive as `message.status_changed`."""
    await state.limiter.messages(request, box.principal)
    # WhatsApp bans numbers that send in bursts: each number has its own budget, whoever sends.
    await state.limiter.enforce(request, "whatsapp_sends", f"{number.tenant_id}:{number.id}")
    outgoing, stored = await box.queue_reply(conversation_id, body.content, number.transport)
    background.add_task(state.whatsapp.send, outgoing)
    return stored


@conversations_router.post(
    "/{conversation_id}/attachments",
    response_model=InboxMessageOut,
    status_code=status.HTTP_201_CREATED,
    responses={413: {"description": "Over WhatsApp's limit for its kind, or the company's quota"}, 415: {}},
)
async def send_file(
    conversation_id: uuid.UUID,
    box: InboxDep,
    number: ConversationNumber,
    session: DbSession,
    state: State,
    request: Request,
    background: BackgroundTasks,
    file: Annotated[UploadFile, File(description="A photo (JPEG, PNG), audio, video (MP4, 3GPP) or any document")],
    caption: Annotated[str, Form(max_length=1024)] = "",
) -> dict[str, Any]:
    """An agent's file (with an optional caption), checked against WhatsApp's size and type limits
    (413, 415) before anything is stored, then sent like a text reply (delivery status included)."""
    await state.limiter.messages(request, box.principal)
    await state.limiter.enforce(request, "whatsapp_sends", f"{number.tenant_id}:{number.id}")
    stored_file = await store_upload(state.blobs, state.settings, Attachments(session, box.principal), file, caption)
    try:
        outgoing, stored = await box.queue_reply(conversation_id, caption, number.transport, stored_file)
    except BaseException:  # refused (a closed conversation, the 24-hour window): no file kept without its row
        await state.blobs.delete(stored_file.key)
        raise
    background.add_task(state.whatsapp.send, outgoing)
    return stored
