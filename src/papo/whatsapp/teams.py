"""Teams of the company's staff: inbox conversations are assigned to a team as well as (or instead
of) an agent, and each agent's "team" view shows their teams' conversations. Staff read teams;
owners, admins and API keys write them (row-level security holds both)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth import service as auth_service
from papo.auth.models import STAFF_ROLES
from papo.auth.service import Principal
from papo.db.base import new_id
from papo.db.engine import rows_changed
from papo.errors import Conflict, InvalidInput, NotFound
from papo.whatsapp.models import Team, TeamMember

TEAM_NOT_FOUND = "team not found"


class Teams:
    def __init__(self, db: AsyncSession, principal: Principal) -> None:
        principal.require_staff("teams are for the company's staff")
        self.db = db
        self.principal = principal

    def _require_writer(self) -> None:
        self.principal.require_manager("teams")

    async def all(self) -> list[dict[str, Any]]:
        teams = await self.db.scalars(
            select(Team).where(Team.tenant_id == self.principal.tenant_id).order_by(Team.name)
        )
        members = await self.db.execute(
            select(TeamMember.team_id, TeamMember.user_id).where(TeamMember.tenant_id == self.principal.tenant_id)
        )
        by_team: dict[uuid.UUID, list[str]] = {}
        for row in members:
            by_team.setdefault(row.team_id, []).append(row.user_id)
        return [
            {"id": t.id, "name": t.name, "member_ids": sorted(by_team.get(t.id, [])), "created_at": t.created_at}
            for t in teams
        ]

    async def require(self, team_id: uuid.UUID) -> Team:
        team = await self.db.get(Team, (self.principal.tenant_id, team_id))
        if team is None:
            raise NotFound(TEAM_NOT_FOUND)
        return team

    async def create(self, name: str) -> Team:
        self._require_writer()
        team = Team(tenant_id=self.principal.tenant_id, id=new_id(), name=name.strip())
        self.db.add(team)
        try:
            async with self.db.begin_nested():
                await self.db.flush()
        except IntegrityError as exc:
            raise Conflict(f"a team named {name.strip()!r} already exists") from exc
        await self.db.refresh(team)
        return team

    async def delete(self, team_id: uuid.UUID) -> None:
        """The team; its conversations stay, unassigned from it."""
        self._require_writer()
        statement = delete(Team).where(Team.tenant_id == self.principal.tenant_id, Team.id == team_id)
        if not await rows_changed(self.db, statement):
            raise NotFound(TEAM_NOT_FOUND)

    async def set_members(self, team_id: uuid.UUID, user_ids: list[str]) -> None:
        """The team's members (replacing them): the company's staff only."""
        self._require_writer()
        await self.require(team_id)
        for user_id in set(user_ids):
            try:
                member = await auth_service.find_member(self.db, user_id)
            except NotFound:
                member = None
            if member is None or member.role not in STAFF_ROLES:
                raise InvalidInput("a team has the company's owners, admins and agents", field="user_ids")
        tenant_id = self.principal.tenant_id
        await self.db.execute(
            delete(TeamMember).where(TeamMember.tenant_id == tenant_id, TeamMember.team_id == team_id)
        )
        if user_ids:
            rows = [{"tenant_id": tenant_id, "team_id": team_id, "user_id": user_id} for user_id in set(user_ids)]
            await self.db.execute(insert(TeamMember), rows)

    async def of_member(self, user_id: str) -> list[uuid.UUID]:
        rows = await self.db.scalars(
            select(TeamMember.team_id).where(
                TeamMember.tenant_id == self.principal.tenant_id, TeamMember.user_id == user_id
            )
        )
        return list(rows)
