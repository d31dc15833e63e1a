"""Seed 004's automatic maintenance: every `maintenance_interval_seconds`, one process at a time
(a try-lock), each company's sessions stopped or failed and idle `whatsapp_cleanup_stale_days` are
deactivated and credential files no active session owns are removed, as `POST /session/cleanup`
does on request."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from papo.db.engine import Database, driver
from papo.settings import Settings
from papo.whatsapp.hub import WhatsappHub
from papo.whatsapp.rows import service_principal
from papo.whatsapp.schemas import CleanupReport
from papo.whatsapp.service import SessionService

log = structlog.get_logger(__name__)
CLEANUP_LOCK = 7070707073  # distinct from ops.alerts.ALERTS_LOCK


def store_tenant(slug: str) -> uuid.UUID | None:
    """The company a credential store belongs to (its name starts with the tenant's id)."""
    try:
        return uuid.UUID(hex=slug.split("-", 1)[0])
    except ValueError:
        return None


async def clean_up_every_company(db: Database, hub: WhatsappHub, stale_days: int) -> dict[uuid.UUID, CleanupReport]:
    """One round: every company with an active session or a credential file here. Empty when another
    process is doing the round."""
    reports: dict[uuid.UUID, CleanupReport] = {}
    async with db.transaction() as lock_holder:
        if not await driver(lock_holder).fetchval("SELECT pg_try_advisory_xact_lock($1)", CLEANUP_LOCK):
            return reports
        rows = await driver(lock_holder).fetch("SELECT * FROM papo_active_whatsapp_sessions()")
        tenants = {row["wa_tenant_id"] for row in rows}
        for transport in hub.transports.values():
            tenants |= {t for t in map(store_tenant, transport.stored_sessions()) if t is not None}
        for tenant_id in sorted(tenants):
            principal = service_principal(tenant_id)
            try:
                async with db.transaction(principal.context()) as session:
                    report = await SessionService(session, principal, hub).clean_up(stale_days=stale_days)
            except Exception as exc:  # one company's trouble never stops the others'
                log.warning("whatsapp clean-up failed", tenant=str(tenant_id), error=str(exc))
                continue
            if report.deactivated or report.files_removed or report.errors:
                log.info(
                    "whatsapp clean-up",
                    tenant=str(tenant_id),
                    deactivated=report.deactivated,
                    files_removed=report.files_removed,
                    errors=report.errors,
                )
            reports[tenant_id] = report
    return reports


async def clean_up_loop(db: Database, settings: Settings, hub: WhatsappHub) -> None:
    while True:
        await asyncio.sleep(settings.maintenance_interval_seconds)
        try:
            await clean_up_every_company(db, hub, settings.whatsapp_cleanup_stale_days)
        except Exception as exc:  # the next round tries again
            log.warning("whatsapp clean-up failed", error=str(exc))
