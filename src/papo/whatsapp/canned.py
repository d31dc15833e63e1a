"""Canned responses: a company's saved replies, which agents type as `/shortcut` in the inbox.
Staff read them; owners, admins and API keys write them (row-level security holds both)."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.db.base import new_id
from papo.db.engine import rows_changed
from papo.errors import Conflict, NotFound
from papo.whatsapp.models import CannedResponse


class CannedResponses:
    def __init__(self, db: AsyncSession, principal: Principal) -> None:
        principal.require_staff("canned responses are for the company's staff")
        self.db = db
        self.principal = principal

    def _require_writer(self) -> None:
        self.principal.require_manager("canned responses")

    async def list(self) -> list[CannedResponse]:
        rows = await self.db.scalars(
            select(CannedResponse)
            .where(CannedResponse.tenant_id == self.principal.tenant_id)
            .order_by(CannedResponse.shortcut)
        )
        return list(rows)

    async def create(self, shortcut: str, content: str) -> CannedResponse:
        self._require_writer()
        row = CannedResponse(tenant_id=self.principal.tenant_id, id=new_id(), shortcut=shortcut, content=content)
        self.db.add(row)
        try:
            async with self.db.begin_nested():
                await self.db.flush()
        except IntegrityError as exc:
            raise Conflict(f"/{shortcut} already exists") from exc
        await self.db.refresh(row)
        return row

    async def delete(self, canned_id: uuid.UUID) -> None:
        self._require_writer()
        statement = delete(CannedResponse).where(
            CannedResponse.tenant_id == self.principal.tenant_id, CannedResponse.id == canned_id
        )
        if not await rows_changed(self.db, statement):
            raise NotFound("canned response not found")
