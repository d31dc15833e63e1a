"""Periodic housekeeping in every server process: realtime events past the replay window, chats
deleted longer ago than the retention period, and rate-limit buckets that are full again. Each round
runs in one process at a time (a try-lock), and every sweep is idempotent, so any number of
processes can carry this loop."""

from __future__ import annotations

import asyncio
import time

import structlog

from papo.assistants.replies import ReplyManager
from papo.chat.service import purge_deleted_sessions
from papo.db.engine import Database, driver
from papo.realtime.service import prune_events
from papo.settings import Settings

log = structlog.get_logger(__name__)
MAINTENANCE_LOCK = 7070707071


async def run_once(db: Database, settings: Settings) -> tuple[int, int] | None:
    """One sweep; None when another process holds the lock."""
    async with db.transaction() as session:
        if not await driver(session).fetchval("SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK):
            return None
        events = await prune_events(session, settings.realtime_retention_days)
        sessions = await purge_deleted_sessions(session, settings.deleted_retention_days)
        buckets = await driver(session).fetchval("SELECT papo_prune_rate_limits()")
    if events or sessions:
        log.info("maintenance", events_pruned=events, sessions_purged=sessions, rate_limit_buckets_pruned=buckets)
    return events, sessions


async def maintenance_loop(db: Database, settings: Settings, replies: ReplyManager) -> None:
    """Retention sweeps every `maintenance_interval_seconds`; abandoned replies far more often, so
    one never looks `streaming` for long after its process died."""
    tick = max(1.0, min(settings.reply_stale_seconds / 2, settings.maintenance_interval_seconds))
    next_retention = 0.0
    while True:
        try:
            if time.monotonic() >= next_retention:
                await run_once(db, settings)
                next_retention = time.monotonic() + settings.maintenance_interval_seconds
            await replies.sweep()
        except Exception as exc:  # the next round tries again; a failed sweep must not stop the server
            log.warning("maintenance failed", error=str(exc))
        await asyncio.sleep(tick)
