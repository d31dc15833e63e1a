"""Token usage per member and day, the admins' report, and the optional daily quota per member."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth import tenant_settings
from papo.auth.service import Principal
from papo.db.engine import driver
from papo.errors import QuotaExceeded

QUOTA_KEY = "daily_token_quota_per_user"
TODAY = "(now() AT TIME ZONE 'UTC')::date"


@dataclass(frozen=True)
class UsageRow:
    user_id: str
    day: date
    replies: int
    prompt_tokens: int
    completion_tokens: int


async def record(session: AsyncSession, principal: Principal, prompt_tokens: int, completion_tokens: int) -> None:
    await driver(session).execute(
        f"""
        INSERT INTO usage_daily AS u (tenant_id, user_id, day, replies, prompt_tokens, completion_tokens)
        VALUES ($1, $2, {TODAY}, 1, $3, $4)
        ON CONFLICT (tenant_id, user_id, day) DO UPDATE
           SET replies = u.replies + 1,
               prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
               completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens
        """,  # noqa: S608  (TODAY is a fixed SQL expression)
        principal.tenant_id,
        principal.user_id,
        prompt_tokens,
        completion_tokens,
    )


async def daily_quota(session: AsyncSession, tenant_id: uuid.UUID) -> int | None:
    value = await tenant_settings.setting(session, tenant_id, QUOTA_KEY)
    return int(value) if value is not None else None


async def check_quota(session: AsyncSession, principal: Principal) -> None:
    """Refuse a new reply once the member used their tenant's daily token quota (if one is set)."""
    quota = await daily_quota(session, principal.tenant_id)
    if quota is None:
        return
    used = await driver(session).fetchval(
        f"SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_daily "  # noqa: S608
        f"WHERE tenant_id = $1 AND user_id = $2 AND day = {TODAY}",
        principal.tenant_id,
        principal.user_id,
    )
    if used >= quota:
        raise QuotaExceeded(f"today's AI quota of {quota} tokens is used up ({used}); it resets at 00:00 UTC")


async def set_quota(session: AsyncSession, principal: Principal, tokens: int | None) -> None:
    await tenant_settings.set_setting(session, principal, QUOTA_KEY, tokens)


async def report(
    session: AsyncSession, principal: Principal, since: date, until: date, user_id: str | None
) -> list[UsageRow]:
    """Members see their own rows; admins every member's (RLS decides, the filter narrows)."""
    if not principal.is_admin:
        user_id = principal.user_id
    rows = await driver(session).fetch(
        """
        SELECT user_id, day, replies, prompt_tokens, completion_tokens FROM usage_daily
         WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 AND ($4::text IS NULL OR user_id = $4)
         ORDER BY day, user_id
        """,
        principal.tenant_id,
        since,
        until,
        user_id,
    )
    return [UsageRow(**dict(row)) for row in rows]
