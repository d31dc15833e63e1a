"""WhatsApp sessions: seed 004's SessionService, tenant-scoped: the CRUD of a company's numbers.

Rows are written here, in the caller's transaction; running them is the hub's job (`hub.py`), which
the endpoints hand the session to after the commit. `sync_session_status` makes row and memory
agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

from fastapi import Depends
from sqlalchemy import Boolean, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.blobs import BlobStore
from papo.db.base import new_id
from papo.errors import Conflict, NotFound
from papo.ops.ratelimit import RateLimiter
from papo.runtime import current_runtime
from papo.settings import Settings
from papo.whatsapp.hub import WhatsappHub
from papo.whatsapp.media import MediaDownloads
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.rows import (
    NUMBER_TAKEN,
    SEALED_TOKEN,
    announce,
    cloud_number,
    session_out,
    stored_number,
    violated,
)
from papo.whatsapp.schemas import CleanupReport, SessionCreate, SessionPatch, SessionStats, SyncChange
from papo.whatsapp.status import SessionStatus
from papo.whatsapp.transports.base import SessionKey

SESSION_NOT_FOUND = "WhatsApp session not found"
TENANT_NUMBER_INDEX = "uq_whatsapp_sessions_tenant_cloud_number"
TENANT_NAME_INDEX = "uq_whatsapp_sessions_tenant_name"

S = SessionStatus


class SessionService:
    """Seed 004's SessionService for the caller's company (`principal.tenant_id` is companyId)."""

    def __init__(self, session: AsyncSession, principal: Principal, hub: WhatsappHub) -> None:
        self.db = session
        self.principal = principal
        self.hub = hub

    def _key(self, row: WhatsappSession) -> SessionKey:
        return SessionKey(row.tenant_id, row.id)

    async def find_all_by_company(self, *, include_inactive: bool = False) -> list[WhatsappSession]:
        query = select(WhatsappSession).where(WhatsappSession.tenant_id == self.principal.tenant_id)
        if not include_inactive:
            query = query.where(WhatsappSession.is_active.is_(True))
        return list((await self.db.scalars(query.order_by(WhatsappSession.created_at))).all())

    async def find_one_by_company(self, session_id: uuid.UUID) -> WhatsappSession:
        row = await self.db.get(WhatsappSession, (self.principal.tenant_id, session_id))
        if row is None:
            raise NotFound(SESSION_NOT_FOUND)
        return row

    async def find_by_reference(self, reference: str) -> WhatsappSession:
        """A session by its id, or by its name within the company (seed 004 addresses both ways);
        an active session wins over removed ones of the same name."""
        try:
            return await self.find_one_by_company(uuid.UUID(reference))
        except ValueError:
            pass
        row = await self.db.scalar(
            select(WhatsappSession)
            .where(WhatsappSession.tenant_id == self.principal.tenant_id, WhatsappSession.name == reference)
            .order_by(WhatsappSession.is_active.desc(), WhatsappSession.updated_at.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound(SESSION_NOT_FOUND)
        return row

    async def create(self, body: SessionCreate) -> WhatsappSession:
        """Stored first (STOPPED); the caller starts it after commit (see `start_after_commit`)."""
        self.principal.require_admin()
        self.hub.transport(body.transport)
        await self._check_unique_name(body.name)
        config = self._seal(body.config)
        if body.transport == "cloud":
            config["phone_number_id"] = cloud_number(body.config)
            await self._check_number_free(config["phone_number_id"])
        row = WhatsappSession(
            tenant_id=self.principal.tenant_id,
            id=new_id(),
            name=body.name.strip(),
            transport=body.transport,
            config=config,
            assistant_id=body.assistant_id,
            status=S.STOPPED.value,
        )
        self.db.add(row)
        await self._flush_checked(body.name)
        await self.db.refresh(row)
        announce(self.db, row)
        return row

    async def _check_number_free(self, number: str, *, except_id: uuid.UUID | None = None) -> None:
        """A Cloud API number this company already has (active), or that another company verified,
        is not registered again; an unverified claim of another company blocks nobody (0021)."""
        this_company = exists().where(
            WhatsappSession.tenant_id == self.principal.tenant_id,
            WhatsappSession.transport == "cloud",
            WhatsappSession.is_active,
            WhatsappSession.config["phone_number_id"].astext == number,
            WhatsappSession.id.is_distinct_from(except_id),
        )
        verified_elsewhere = func.papo_whatsapp_number_connected(number, except_id, type_=Boolean)
        # the row's pending changes are flushed by _flush_checked, which turns a lost race into a 409
        with self.db.no_autoflush:
            taken = await self.db.scalar(select(or_(this_company, verified_elsewhere)))
        if taken:
            raise Conflict(NUMBER_TAKEN)

    async def _flush_checked(self, name: str) -> None:
        """Flush; a concurrent request that took the same name or number is a 409, not a 500."""
        try:
            await self.db.flush()
        except IntegrityError as exc:
            if violated(exc, TENANT_NUMBER_INDEX):
                raise Conflict(NUMBER_TAKEN) from exc
            if violated(exc, TENANT_NAME_INDEX):
                raise Conflict(f"this company already has a WhatsApp session named {name!r}") from exc
            raise

    async def _check_unique_name(self, name: str, *, except_id: uuid.UUID | None = None) -> None:
        query = select(WhatsappSession.id).where(
            WhatsappSession.tenant_id == self.principal.tenant_id,
            func.lower(WhatsappSession.name) == name.strip().lower(),
            WhatsappSession.is_active.is_(True),
        )
        if except_id is not None:
            query = query.where(WhatsappSession.id != except_id)
        if await self.db.scalar(query) is not None:
            raise Conflict(f"this company already has a WhatsApp session named {name!r}")

    def _seal(self, config: dict[str, Any], keep: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store an access token encrypted (a config sent without one keeps the stored token)."""
        sealed = {k: v for k, v in config.items() if k not in ("access_token", SEALED_TOKEN)}
        token = config.get("access_token")
        if isinstance(token, str) and token:
            sealed[SEALED_TOKEN] = self.hub.keys.seal(token)
        elif keep and SEALED_TOKEN in keep:
            sealed[SEALED_TOKEN] = keep[SEALED_TOKEN]
        return sealed

    async def update(self, session_id: uuid.UUID, body: SessionPatch) -> tuple[WhatsappSession, bool]:
        """Returns the row and whether it must be restarted after commit (a Cloud API number or token
        changed: the Graph API is asked again; a new number is not the row's until it answers)."""
        self.principal.require_admin()
        row = await self.find_one_by_company(session_id)
        sent = body.model_fields_set
        reverify = False
        if "name" in sent and body.name is not None:
            await self._check_unique_name(body.name, except_id=row.id)
            row.name = body.name.strip()
        if "config" in sent and body.config is not None:
            config = self._seal(body.config, keep=row.config)
            if row.transport == "cloud":
                # like the token, a config sent without the number keeps the stored one
                number = cloud_number({"phone_number_id": row.config.get("phone_number_id"), **body.config})
                config["phone_number_id"] = number
                moved = number != stored_number(row)
                if moved:
                    if row.is_active:
                        await self._check_number_free(number, except_id=row.id)
                    row.verified_number = None
                reverify = row.is_active and (moved or "access_token" in body.config)
            row.config = config
        if "assistant_id" in sent:
            row.assistant_id = body.assistant_id
        await self._flush_checked(row.name)
        await self.db.refresh(row)
        announce(self.db, row)
        return row, reverify

    async def remove(self, session_id: uuid.UUID) -> WhatsappSession:
        """Deactivate (kept for history; the name is free again); the caller logs it out after commit."""
        self.principal.require_admin()
        row = await self.find_one_by_company(session_id)
        row.is_active = False
        row.status = S.STOPPED.value
        row.status_reason = "removed"
        row.qr_code = None
        row.verified_number = None
        await self.db.flush()
        await self.db.refresh(row)
        announce(self.db, row)
        return row

    async def stats(self) -> SessionStats:
        rows = await self.find_all_by_company(include_inactive=True)
        by_status: dict[str, int] = {status.value: 0 for status in S}
        for row in rows:
            if row.is_active:
                by_status[row.status] += 1
        return SessionStats(total=len(rows), active=sum(1 for r in rows if r.is_active), by_status=by_status)

    async def get_session_details(self, session_id: uuid.UUID) -> dict[str, Any]:
        row = await self.find_one_by_company(session_id)
        key = self._key(row)
        self.hub.load_soon(key)
        transport = self.hub.transports.get(row.transport)
        memory = self.hub.memory_status(key)
        return {
            **session_out(row).model_dump(),
            "config": (
                {k: v for k, v in row.config.items() if k != SEALED_TOKEN}
                | {"has_access_token": SEALED_TOKEN in row.config}
                if self.principal.is_admin
                else {}
            ),
            "memory_status": memory,
            "has_credentials": bool(transport and transport.has_credentials(key)),
            "seed_status_word": session_out(row).seed_status,
        }

    async def qr(self, session_id: uuid.UUID) -> WhatsappSession:
        self.principal.require_admin()
        row = await self.find_one_by_company(session_id)
        self.hub.load_soon(self._key(row))
        return row

    async def sync_session_status(self, session_id: uuid.UUID | None = None) -> list[SyncChange]:
        """Seed's syncSessionStatus: the row takes the status this process holds in memory. A session
        this process does not run becomes STOPPED, unless another process is running it (its
        `last_seen` heartbeat is recent)."""
        self.principal.require_admin()
        rows = [await self.find_one_by_company(session_id)] if session_id else await self.find_all_by_company()
        changes = []
        recent = datetime.now(UTC) - timedelta(seconds=self.hub.settings.whatsapp_heartbeat_seconds * 3)
        for row in rows:
            memory = self.hub.memory_status(self._key(row))
            database = S(row.status)
            if memory is None and (database is S.STOPPED or (row.last_seen is not None and row.last_seen > recent)):
                continue
            target = memory or S.STOPPED
            if target is not database:
                changes.append(SyncChange(id=row.id, database=database, memory=target))
                row.status = target.value
                row.status_reason = "synchronised with the running process"
                if target is not S.SCAN_QR_CODE:
                    row.qr_code = None
                await self.db.flush()
                await self.db.refresh(row)
                announce(self.db, row)
        return changes

    async def cleanup_inactive_sessions_from_database(self, *, stale_days: int = 30) -> CleanupReport:
        """Seed's cleanupInactiveSessionsFromDatabase: active sessions that have not worked for
        `stale_days` are deactivated; credential files that no active session of this company owns
        are removed. An admin's request; housekeeping runs `clean_up` on its own."""
        self.principal.require_admin()
        return await self.clean_up(stale_days=stale_days)

    async def clean_up(self, *, stale_days: int) -> CleanupReport:
        rows = await self.find_all_by_company(include_inactive=True)
        cutoff = datetime.now(UTC) - timedelta(days=stale_days)
        report = CleanupReport(examined=len(rows), deactivated=0, files_removed=0, errors=[])
        for row in rows:
            idle_since = row.last_seen or row.created_at
            if row.is_active and S(row.status) in (S.STOPPED, S.FAILED) and idle_since < cutoff:
                row.is_active = False
                row.verified_number = None
                row.status_reason = f"deactivated by clean-up: idle since {idle_since.date().isoformat()}"
                report.deactivated += 1
        await self.db.flush()
        active = {self._key(r).slug for r in rows if r.is_active}
        prefix = self.principal.tenant_id.hex + "-"
        for kind, transport in self.hub.transports.items():
            for slug in transport.stored_sessions():
                if slug.startswith(prefix) and slug not in active:
                    try:
                        report.files_removed += int(transport.remove_store(slug))
                    except OSError as exc:
                        report.errors.append(f"{kind}/{slug}: {exc}")
        return report


class WhatsappRuntime(Protocol):
    """What WhatsApp's endpoints need from the running process."""

    settings: Settings
    whatsapp: WhatsappHub
    media: MediaDownloads
    blobs: BlobStore
    limiter: RateLimiter


State = Annotated[WhatsappRuntime, Depends(current_runtime)]
