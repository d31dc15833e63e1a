"""The admins' usage report."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Query

from papo.auth.deps import AdminPrincipal, DbSession
from papo.insights import service
from papo.insights.schemas import UsageSummaryOut
from papo.runtime import current_runtime
from papo.settings import Settings


class InsightsRuntime(Protocol):
    settings: Settings


State = Annotated[InsightsRuntime, Depends(current_runtime)]

router = APIRouter(prefix="/api/v1/usage", tags=["usage"])


@router.get("/summary", response_model=UsageSummaryOut, response_model_by_alias=True)
async def usage_summary(
    session: DbSession,
    principal: AdminPrincipal,
    state: State,
    since: Annotated[date | None, Query(alias="from", description="first UTC day (default: 29 days ago)")] = None,
    until: Annotated[date | None, Query(alias="to", description="last UTC day (default: today)")] = None,
) -> UsageSummaryOut:
    """Tenant admins: messages, active members, chats opened, AI tokens with estimated cost per model,
    WhatsApp messages per number, and customer sentiment, per UTC day. Counts only, no content."""
    first, last = service.report_window(since, until, datetime.now(UTC).date())
    summary = await service.usage_summary(session, principal, first, last, state.settings.ai_prices)
    return UsageSummaryOut.model_validate(asdict(summary))
