"""Outbound webhooks: subscriptions, the fan-out from the events outbox, the sender, the delivery log.

Payloads follow the Standard Webhooks convention (webhook-id, webhook-timestamp and
webhook-signature headers; HMAC-SHA256 over "id.timestamp.body" with a `whsec_` secret), so a
receiver verifies them with any Standard Webhooks or Svix library. A delivery that fails is tried
again with exponential backoff (with jitter) until it is a day old, then marked failed; every
attempt's outcome is in the log, and an admin can replay any delivery.

What leaves papo is what the tenant's staff may read: WhatsApp conversations in full; members'
own chats as references (ids, role, status, times) without their text, which only the member's
own token can fetch."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from papo.auth.service import Principal
from papo.crypto import KeyBox, new_signing_secret, signature_headers
from papo.db.base import new_id
from papo.db.engine import Database, after_commit, driver, rows_changed
from papo.errors import InvalidInput, NotFound
from papo.netguard import NOT_ALLOWED, NetGuard, TargetRefused
from papo.ops.metrics import WEBHOOK_ATTEMPTS
from papo.realtime.service import Event
from papo.settings import Settings
from papo.waiting import work_when_woken
from papo.webhooks.models import WebhookDelivery, WebhookEndpoint

log = structlog.get_logger(__name__)

EVENT_TYPES = (
    "session.created",
    "session.updated",
    "session.deleted",
    "message.created",
    "message.updated",
    "message.status_changed",
    "message.superseded",
    "whatsapp.session.updated",
    "whatsapp.conversation.updated",
)
TEST_EVENT = "webhook.test"
# Fields of a member's own chat that may leave: references, never what was written.
REFERENCE_FIELDS = frozenset(
    {
        "id",
        "session_id",
        "user_id",
        "role",
        "status",
        "reply_state",
        "channel",
        "created_at",
        "updated_at",
        "last_message_at",
        "delivery_status",
        "purged",
        "streaming",
    }
)
MAX_RETRY_SECONDS = 3600.0
SEND_TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 60.0
UNREACHABLE = "receiver unreachable"
TIMED_OUT = "receiver did not answer in time"


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime


def payload_for(event: Event) -> dict[str, Any]:
    data = event.data if event.audience == "staff" else {k: v for k, v in event.data.items() if k in REFERENCE_FIELDS}
    created = (event.created_at or datetime.now(UTC)).isoformat()
    return {"type": event.type, "timestamp": created, "event_id": event.id, "data": data}


def retry_delay(attempts: int, first: float) -> float:
    """After `attempts` failed tries: first, 2×first, 4×first … at most an hour, with ±20 % jitter."""
    base = min(MAX_RETRY_SECONDS, first * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.8, 1.2))


async def check_target(url: str, guard: NetGuard) -> None:
    """http(s) only, and never an address inside the server's own network unless the operator allowed
    it: a tenant admin must not be able to make papo call its database, metadata service or neighbours.
    (Telling the admin now; every delivery's connection is checked again, see WebhookSender.)"""
    try:
        await guard.check_url(url)
    except TargetRefused as exc:
        raise InvalidInput(exc.detail, field="url") from None


def failure_note(exc: Exception) -> str:
    """What the delivery log says about a failed attempt: never the receiver's own words or which
    address and port did not answer, which would make the log a scanner of the server's network."""
    if isinstance(exc, TargetRefused | httpx.InvalidURL):
        return NOT_ALLOWED
    if isinstance(exc, httpx.TimeoutException):
        return TIMED_OUT
    return UNREACHABLE


def _check_types(event_types: Sequence[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"unknown event types: {', '.join(unknown)}", field="event_types")
    if not event_types:
        raise InvalidInput("subscribe to at least one event type", field="event_types")
    return sorted(set(event_types))


ENDPOINT_COLUMNS = (
    WebhookEndpoint.id,
    WebhookEndpoint.url,
    WebhookEndpoint.description,
    WebhookEndpoint.event_types,
    WebhookEndpoint.is_active,
    WebhookEndpoint.created_at,
    WebhookEndpoint.updated_at,
)
DELIVERY_COLUMNS = (
    WebhookDelivery.id,
    WebhookDelivery.event_id,
    WebhookDelivery.event_type,
    WebhookDelivery.status,
    WebhookDelivery.attempts,
    WebhookDelivery.next_attempt_at,
    WebhookDelivery.last_attempt_at,
    WebhookDelivery.last_status_code,
    WebhookDelivery.last_error,
    WebhookDelivery.delivered_at,
    WebhookDelivery.replay_of,
    WebhookDelivery.created_at,
    WebhookDelivery.payload,
)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        row.id,
        row.url,
        row.description,
        list(row.event_types),
        row.is_active,
        row.created_at,
        row.updated_at,
    )


class WebhookService:
    """A tenant admin's subscriptions and delivery log (row-level security keeps it to their tenant)."""

    def __init__(
        self,
        session: AsyncSession,
        principal: Principal,
        settings: Settings,
        keys: KeyBox,
        guard: NetGuard | None = None,
    ) -> None:
        principal.require_admin()
        self.db = session
        self.principal = principal
        self.settings = settings
        self.keys = keys
        self.guard = guard or NetGuard.from_settings(settings, webhooks=True)

    async def create(self, url: str, event_types: Sequence[str], description: str | None) -> tuple[Endpoint, str]:
        types = _check_types(event_types)
        await check_target(url, self.guard)
        secret = new_signing_secret()
        created = await self.db.execute(
            insert(WebhookEndpoint)
            .values(
                tenant_id=self.principal.tenant_id,
                id=new_id(),
                url=url,
                description=description,
                event_types=types,
                secret_sealed=self.keys.seal(secret),
            )
            .returning(*ENDPOINT_COLUMNS)
        )
        return _endpoint(created.one()), secret

    def _endpoints(self) -> Select[uuid.UUID, str, str | None, list[str], bool, datetime, datetime]:
        return (
            select(*ENDPOINT_COLUMNS)
            .where(WebhookEndpoint.tenant_id == self.principal.tenant_id)
            .order_by(WebhookEndpoint.created_at)
        )

    async def endpoints(self) -> list[Endpoint]:
        return [_endpoint(row) for row in await self.db.execute(self._endpoints())]

    async def get(self, endpoint_id: uuid.UUID) -> Endpoint:
        row = (await self.db.execute(self._endpoints().where(WebhookEndpoint.id == endpoint_id))).first()
        if row is None:
            raise NotFound("no such webhook")
        return _endpoint(row)

    async def update(self, endpoint_id: uuid.UUID, changes: dict[str, Any]) -> Endpoint:
        current = await self.get(endpoint_id)
        url = changes.get("url", current.url)
        types = _check_types(changes["event_types"]) if "event_types" in changes else current.event_types
        if url != current.url:
            await check_target(url, self.guard)
        updated = await self.db.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == self.principal.tenant_id, WebhookEndpoint.id == endpoint_id)
            .values(
                url=url,
                description=changes.get("description", current.description),
                event_types=types,
                is_active=changes.get("is_active", current.is_active),
            )
            .returning(*ENDPOINT_COLUMNS)
        )
        return _endpoint(updated.one())

    async def delete(self, endpoint_id: uuid.UUID) -> None:
        deleted = await rows_changed(
            self.db,
            delete(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == self.principal.tenant_id, WebhookEndpoint.id == endpoint_id
            ),
        )
        if deleted == 0:
            raise NotFound("no such webhook")

    async def deliveries(self, endpoint_id: uuid.UUID, limit: int, before: int | None) -> list[dict[str, Any]]:
        await self.get(endpoint_id)
        query = select(*DELIVERY_COLUMNS).where(
            WebhookDelivery.tenant_id == self.principal.tenant_id, WebhookDelivery.endpoint_id == endpoint_id
        )
        if before is not None:
            query = query.where(WebhookDelivery.id < before)
        rows = await self.db.execute(query.order_by(WebhookDelivery.id.desc()).limit(limit))
        return [dict(row) for row in rows.mappings()]

    async def replay(self, endpoint_id: uuid.UUID, delivery_id: int) -> dict[str, Any]:
        """The same payload again, as a new delivery (the original's log stays as it was)."""
        await self.get(endpoint_id)
        original = aliased(WebhookDelivery)
        replayed = await self.db.execute(
            insert(WebhookDelivery)
            .from_select(
                ["tenant_id", "endpoint_id", "event_id", "event_type", "payload", "replay_of"],
                select(
                    original.tenant_id,
                    original.endpoint_id,
                    original.event_id,
                    original.event_type,
                    original.payload,
                    original.id,
                ).where(
                    original.tenant_id == self.principal.tenant_id,
                    original.endpoint_id == endpoint_id,
                    original.id == delivery_id,
                ),
            )
            .returning(*DELIVERY_COLUMNS)
        )
        row = replayed.mappings().first()
        if row is None:
            raise NotFound("no such delivery")
        return dict(row)

    async def ping(self, endpoint_id: uuid.UUID) -> dict[str, Any]:
        """A `webhook.test` delivery, to check the receiver's URL and signature handling."""
        await self.get(endpoint_id)
        payload: dict[str, Any] = {
            "type": TEST_EVENT,
            "timestamp": datetime.now(UTC).isoformat(),
            "event_id": None,
            "data": {},
        }
        queued = await self.db.execute(
            insert(WebhookDelivery)
            .values(tenant_id=self.principal.tenant_id, endpoint_id=endpoint_id, event_type=TEST_EVENT, payload=payload)
            .returning(*DELIVERY_COLUMNS)
        )
        return dict(queued.mappings().one())


class WebhookSender:
    """Sends due deliveries from any process; woken when deliveries are added, else polls. Its own
    HTTP client connects through the guard: only to checked addresses, whatever DNS says later."""

    def __init__(self, db: Database, settings: Settings, keys: KeyBox, guard: NetGuard | None = None) -> None:
        self.db = db
        self.settings = settings
        self.keys = keys
        self.guard = guard or NetGuard.from_settings(settings, webhooks=True)
        self.http = self.guard.client()
        self.wake = asyncio.Event()

    @staticmethod
    async def deliveries_for(events: Sequence[Event]) -> list[dict[str, Any]]:
        """Outbox handler, first half: the events some subscription may want, as deliveries."""
        return [
            {
                "tenant_id": str(event.tenant_id),
                "event_id": event.id,
                "event_type": event.type,
                "payload": payload_for(event),
            }
            for event in events
            if event.type in EVENT_TYPES
        ]

    async def fan_out(self, session: AsyncSession, wanted: list[dict[str, Any]]) -> None:
        """Outbox handler, second half: each event a subscription wants becomes a pending delivery
        (once), and the sender wakes as soon as they are committed."""
        if wanted:
            added = await driver(session).fetchval(
                "SELECT papo_webhook_fan_out($1::jsonb)", json.dumps(wanted, default=str)
            )
            if added:  # most events have no subscriber: no sender round for them
                after_commit(session, self.wake.set)

    async def run(self) -> None:
        try:
            await work_when_woken(self.wake, self.settings.webhook_poll_seconds, self.send_due, name="webhook sender")
        finally:
            await self.http.aclose()

    async def send_due(self) -> int:
        async with self.db.transaction() as session:
            claimed = await driver(session).fetch(
                "SELECT * FROM papo_claim_webhook_sends($1, $2)", self.settings.webhook_concurrency, LEASE_SECONDS
            )
        # endpoints in parallel; one endpoint's deliveries one after another, in the order of their
        # events (a chat's session.created before its first message.created)
        by_endpoint: dict[Any, list[Any]] = {}
        for row in sorted(claimed, key=lambda row: row["delivery_id"]):
            by_endpoint.setdefault(row["delivery_endpoint_id"], []).append(row)
        await asyncio.gather(*(self._attempt_in_order(rows) for rows in by_endpoint.values()))
        return len(claimed)

    async def _attempt_in_order(self, rows: list[Any]) -> None:
        for row in rows:
            await self._attempt(row)

    async def _attempt(self, row: Any) -> None:
        delivery_id = str(row["delivery_id"])
        body = json.dumps(row["delivery_payload"], separators=(",", ":"), default=str)
        status_code: int | None = None
        error: str | None = None
        try:
            signed = signature_headers(self.keys.open(row["delivery_secret"]), f"msg_{delivery_id}", body)
            response = await self.http.post(
                row["delivery_url"],
                content=body,
                headers={"content-type": "application/json", "user-agent": "papo-webhooks/1", **signed},
                timeout=SEND_TIMEOUT_SECONDS,
                follow_redirects=False,
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"  # not the body: it is the receiver's, and could be anyone's
        except (httpx.HTTPError, httpx.InvalidURL, TargetRefused) as exc:
            error = failure_note(exc)
            log.info("webhook attempt failed", delivery_id=delivery_id, error=type(exc).__name__, reason=str(exc))
        delivered = error is None
        retry_at: datetime | None = None
        if not delivered:
            delay = retry_delay(row["delivery_attempts"] + 1, self.settings.webhook_first_retry_seconds)
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            if retry_at - row["delivery_created_at"] > timedelta(hours=self.settings.webhook_retry_hours):
                retry_at = None
        WEBHOOK_ATTEMPTS.labels("delivered" if delivered else "retry" if retry_at else "failed").inc()
        async with self.db.transaction() as session:
            await driver(session).execute(
                "SELECT papo_record_webhook_attempt($1, $2, $3, $4, $5, $6)",
                row["delivery_tenant_id"],
                row["delivery_id"],
                delivered,
                status_code,
                error,
                retry_at,
            )
