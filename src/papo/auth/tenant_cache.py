"""What every page reads about a tenant (name, brand, sign-up switch), kept per process.

Invalidation is explicit, not a guess: a trigger on `tenants` NOTIFYs `papo_tenant_changed` at
commit (migration 0017) and every process's realtime listener drops that tenant. The process that
made the change drops it right after its own commit too, so its next page (the redirect after
saving) never waits for the notification. A transaction that changed a tenant reads around the
cache, so nothing uncommitted is ever cached. The TTL only bounds staleness while a process's
listener is down."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.web_sessions import PublicTenant, public_tenant
from papo.db.engine import after_commit

CHANNEL = "papo_tenant_changed"
CHANGED_IN_THIS_TRANSACTION = "tenants_changed"


class TenantCache:
    def __init__(self, ttl_seconds: float = 60.0) -> None:
        self.ttl = ttl_seconds
        self.entries: dict[uuid.UUID, tuple[float, PublicTenant | None]] = {}
        self.hits = self.misses = 0

    async def public(self, session: AsyncSession, tenant_id: uuid.UUID) -> PublicTenant | None:
        if session.info.get(CHANGED_IN_THIS_TRANSACTION):
            return await public_tenant(session, tenant_id)
        cached = self.entries.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            self.hits += 1
            return cached[1]
        self.misses += 1
        found = await public_tenant(session, tenant_id)
        self.entries[tenant_id] = (time.monotonic(), found)
        return found

    def forget(self, tenant_id: uuid.UUID) -> None:
        self.entries.pop(tenant_id, None)

    def notified(self, payload: str) -> None:
        """From the listener: a transaction (in any process) changed this tenant, or ("*") the
        listener reconnected and may have missed changes."""
        try:
            self.forget(uuid.UUID(payload))
        except ValueError:
            self.entries.clear()

    def changing(self, session: AsyncSession, tenant_id: uuid.UUID) -> None:
        """Called by code about to change a tenant within `session`'s transaction."""
        session.info[CHANGED_IN_THIS_TRANSACTION] = True
        after_commit(session, lambda: self.forget(tenant_id))
