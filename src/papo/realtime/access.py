"""Open streams follow the principal: what a stream was granted, what withdraws it, and the re-check.

Migration 0022 announces every change that can withdraw access (a membership's role changed or
removed, a user deleted, a browser session ended, an API key revoked) on ACCESS_CHANNEL, with ids
only. The hub holds the streams a notice concerns (no live event goes out meanwhile), re-reads
their access with one query and closes those that lost it; it also re-checks every stream on a
timer and whenever its listening connection comes back, in case a notice was missed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.access_notices import Grant
from papo.db.engine import driver
from papo.realtime.codes import CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED

CHECK_BATCH = 1000


@dataclass(frozen=True)
class Standing:
    """A grant as the database sees it now: the member's role (None without a membership) and what
    was lost, if anything ('api_key', 'membership', 'web_session')."""

    role: str | None
    lost: str | None


LOST_REASONS = {
    "api_key": "access revoked: the API key was revoked",
    "membership": "access revoked: you are no longer a member of this workspace",
    "web_session": "access revoked: this browser was signed out; sign in again",
}


def verdict(grant: Grant, standing: Standing) -> tuple[int, str] | None:
    """How a stream holding `grant` must close now (close code, reason), or None to carry on."""
    if standing.lost is not None:
        return CLOSE_UNAUTHORIZED, LOST_REASONS.get(standing.lost, "access revoked")
    if grant.api_key_id is None and standing.role != grant.role:
        # Closing (not narrowing in place) on any change keeps one rule for every role: the client
        # reconnects and gets exactly what its role sees now, including replay through RLS.
        return CLOSE_FORBIDDEN, f"access changed: your role is now {standing.role}; reconnect to continue"
    return None


async def standings(session: AsyncSession, grants: Iterable[Grant]) -> dict[Grant, Standing]:
    """Every grant's standing, a batch per query (any tenants: papo_stream_access is the relay's view)."""
    found: dict[Grant, Standing] = {}
    pending = list(dict.fromkeys(grants))
    for start in range(0, len(pending), CHECK_BATCH):
        batch: Sequence[Grant] = pending[start : start + CHECK_BATCH]
        rows = await driver(session).fetch(
            "SELECT access_ordinal, access_role, access_lost FROM papo_stream_access($1, $2, $3, $4)",
            [g.tenant_id for g in batch],
            [g.user_id for g in batch],
            [g.web_session_id for g in batch],
            [g.api_key_id for g in batch],
        )
        for row in rows:
            found[batch[row["access_ordinal"] - 1]] = Standing(row["access_role"], row["access_lost"])
    return found
