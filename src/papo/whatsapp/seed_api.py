"""Seed 004's session endpoints (/session/...), for the clients written against it.

They answer in the seed's shape (its field names, `companyId`, `qrCode`, and its status words
CONNECTING / CONNECTED / DISCONNECTED) with papo's detailed state beside them under `papo`, so a
failed session's reason stays visible. A session is addressed by its id or by its name within the
company, as the seed's own examples do (`restartSession('vendas', companyId)`). The work is the
versioned API's (papo.whatsapp.api); only the addressing and the shape are the seed's."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, BackgroundTasks, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from papo.whatsapp import api
from papo.whatsapp.api import Sessions
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.rows import session_out
from papo.whatsapp.schemas import (
    CleanupReport,
    QrOut,
    SessionCreate,
    SessionDetails,
    SessionOut,
    SessionPatch,
    SessionStats,
    SyncChange,
)
from papo.whatsapp.service import SessionService, State
from papo.whatsapp.status import SessionStatus, seed_status

router = APIRouter(prefix="/session", tags=["seed 004"])
Reference = Annotated[str, Path(description="The session's id, or its name within the company.", examples=["vendas"])]
EXAMPLE: dict[str, Any] = {
    "id": "0193a7c2-5b1e-7c41-9a0e-2f6d8b1c4e70",
    "companyId": "0193a7c2-4a10-7e55-8c3b-1d2e3f4a5b6c",
    "name": "vendas",
    "phoneNumber": "+5511999990000",
    "qrCode": None,
    "status": "CONNECTED",
    "statusReason": None,
    "isActive": True,
    "lastSeen": "2026-11-30T12:00:00Z",
    "createdAt": "2026-11-01T09:00:00Z",
    "updatedAt": "2026-11-30T12:00:00Z",
    "papo": {"status": "WORKING", "status_reason": None, "transport": "neonize"},
}


class SeedSession(BaseModel):
    """Seed 004's WhatsappSession, with papo's detailed state under `papo`."""

    model_config = ConfigDict(json_schema_extra={"examples": [cast(JsonDict, EXAMPLE)]})

    id: uuid.UUID
    companyId: uuid.UUID
    name: str
    phoneNumber: str | None
    qrCode: str | None = Field(description="The code to scan while pairing (owners and admins only).")
    status: Literal["CONNECTING", "CONNECTED", "DISCONNECTED"]
    statusReason: str | None = Field(description="Why the session failed or stopped, when it did.")
    isActive: bool
    lastSeen: datetime | None
    createdAt: datetime
    updatedAt: datetime
    papo: SessionOut


def seed_session(row: WhatsappSession, sessions: SessionService) -> SeedSession:
    detailed = session_out(row)
    return SeedSession(
        id=row.id,
        companyId=row.tenant_id,
        name=row.name,
        phoneNumber=detailed.phone_number,
        qrCode=row.qr_code if sessions.principal.is_admin else None,
        status=seed_status(SessionStatus(row.status)),
        statusReason=row.status_reason,
        isActive=row.is_active,
        lastSeen=row.last_seen,
        createdAt=row.created_at,
        updatedAt=row.updated_at,
        papo=detailed,
    )


async def _shaped(sessions: SessionService, session_id: uuid.UUID) -> SeedSession:
    return seed_session(await sessions.find_one_by_company(session_id), sessions)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SeedSession)
async def create(body: SessionCreate, sessions: Sessions, state: State, background: BackgroundTasks) -> SeedSession:
    """The seed's `create(companyId, dto)`: stored, then connecting (a QR code follows)."""
    created = await api.create_session(body, sessions, state, background)
    return await _shaped(sessions, created.id)


@router.get("", response_model=list[SeedSession])
async def find_all_by_company(sessions: Sessions, include_inactive: bool = False) -> list[SeedSession]:
    rows = await sessions.find_all_by_company(include_inactive=include_inactive)
    return [seed_session(row, sessions) for row in rows]


@router.get("/stats", response_model=SessionStats)
async def stats(sessions: Sessions) -> SessionStats:
    return await api.stats(sessions)


@router.post("/cleanup", response_model=CleanupReport)
async def cleanup(sessions: Sessions, stale_days: Annotated[int, Query(ge=1, le=36500)] = 30) -> CleanupReport:
    """The seed's `cleanupInactiveSessionsFromDatabase` (POST: a change of state never answers GET)."""
    return await api.cleanup(sessions, stale_days)


@router.get("/cleanup", include_in_schema=False)
async def cleanup_by_get() -> None:
    await api.cleanup_by_get()


@router.post("/sync", response_model=list[SyncChange])
async def sync(sessions: Sessions, session_id: uuid.UUID | None = None) -> list[SyncChange]:
    return await api.sync(sessions, session_id)


@router.get("/{session_id}", response_model=SeedSession)
async def find_one_by_company(session_id: Reference, sessions: Sessions) -> SeedSession:
    return seed_session(await sessions.find_by_reference(session_id), sessions)


@router.patch("/{session_id}", response_model=SeedSession)
async def update(
    session_id: Reference, body: SessionPatch, sessions: Sessions, state: State, background: BackgroundTasks
) -> SeedSession:
    row = await sessions.find_by_reference(session_id)
    await api.update_session(row.id, body, sessions, state, background)
    return await _shaped(sessions, row.id)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove(session_id: Reference, sessions: Sessions, state: State, background: BackgroundTasks) -> Response:
    row = await sessions.find_by_reference(session_id)
    return await api.remove_session(row.id, sessions, state, background)


@router.get("/{session_id}/details", response_model=SessionDetails)
async def details(session_id: Reference, sessions: Sessions) -> dict[str, Any]:
    return await api.details((await sessions.find_by_reference(session_id)).id, sessions)


@router.post("/{session_id}/restart", response_model=SeedSession, status_code=status.HTTP_202_ACCEPTED)
async def restart(session_id: Reference, sessions: Sessions, state: State, background: BackgroundTasks) -> SeedSession:
    """The seed's `restartSession(sessionId, companyId)`: by id or by name."""
    row = await sessions.find_by_reference(session_id)
    await api.restart(row.id, sessions, state, background)
    return seed_session(row, sessions)


@router.post("/{session_id}/stop", response_model=SeedSession, status_code=status.HTTP_202_ACCEPTED)
async def stop(session_id: Reference, sessions: Sessions, state: State, background: BackgroundTasks) -> SeedSession:
    row = await sessions.find_by_reference(session_id)
    await api.stop(row.id, sessions, state, background)
    return seed_session(row, sessions)


@router.get("/{session_id}/qr", response_model=QrOut)
async def qr_text(session_id: Reference, sessions: Sessions) -> QrOut:
    return await api.qr_text((await sessions.find_by_reference(session_id)).id, sessions)


@router.get("/{session_id}/qr.{image_format}", response_class=Response)
async def qr_image(session_id: Reference, image_format: str, sessions: Sessions) -> Response:
    return await api.qr_image((await sessions.find_by_reference(session_id)).id, image_format, sessions)
