"""WhatsApp sessions: seed 004's SessionService, tenant-scoped, on PostgreSQL and a per-process hub.

The database row is the truth that survives restarts; `WhatsappHub` holds what this process is
running (the seed's "hybrid cache"). Every transport event moves the row through the state machine
in `status.py`, in the session's own company context, and is announced to the company's staff as
a realtime `whatsapp.session.updated` event. `sync_session_status` makes row and memory agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, Protocol

import asyncpg
import structlog
from fastapi import Depends
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.assistants.replies import ReplyManager
from papo.auth.service import SERVICE_ROLE, Principal
from papo.chat.service import ChatService
from papo.crypto import KeyBox
from papo.db.base import new_id
from papo.db.engine import Database, application_name, driver
from papo.errors import Conflict, InvalidInput, NotFound, causes
from papo.ops.metrics import WHATSAPP_MESSAGES
from papo.ops.ratelimit import RateLimiter
from papo.realtime.service import emit
from papo.runtime import current_runtime
from papo.settings import Settings
from papo.waiting import work_when_woken
from papo.whatsapp.inbox import DEFAULT_HANDOFF_WORDS, Inbox, OutgoingReply, Received
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.schemas import CleanupReport, SessionCreate, SessionOut, SessionPatch, SessionStats, SyncChange
from papo.whatsapp.status import SEED_TO_STATUS, SessionStatus, can_move
from papo.whatsapp.transports.base import InboundMessage, SessionKey, Transport

log = structlog.get_logger(__name__)
SESSION_NOT_FOUND = "WhatsApp session not found"
# The config key holding a Cloud API token encrypted with the server key (a name, not a secret).
SEALED_TOKEN = "access_token_encrypted"  # noqa: S105
INGEST_POLL_SECONDS = 2.0  # webhook deliveries queued by another process are found this fast
INGEST_BATCH = 200
RUNNING = frozenset({SessionStatus.STARTING, SessionStatus.SCAN_QR_CODE, SessionStatus.WORKING})
COMMAND_CHANNEL = "papo_whatsapp_commands"
OWNER_NAME = "papo-whatsapp-owner"
MAX_RETRY_SECONDS = 3600.0
# A Cloud API number's id as Meta gives it (digits; no leading zero, so one number has one spelling).
PHONE_NUMBER_ID = re.compile(r"[1-9][0-9]{0,31}")
# The one answer to "is this number someone's?": it says nothing about whose (migration 0021).
NUMBER_TAKEN = "this number is already connected to papo"
VERIFIED_NUMBER_INDEX = "uq_whatsapp_sessions_verified_number"
TENANT_NUMBER_INDEX = "uq_whatsapp_sessions_tenant_cloud_number"
TENANT_NAME_INDEX = "uq_whatsapp_sessions_tenant_name"


def violated(exc: BaseException, constraint: str) -> bool:
    """Whether `exc` is (or wraps) a violation of the named constraint or unique index."""
    return any(getattr(seen, "constraint_name", None) == constraint for seen in causes(exc))


def stored_number(row: WhatsappSession) -> str | None:
    """The Cloud API number a row names (as the database's `config->>'phone_number_id'` reads it)."""
    value = row.config.get("phone_number_id")
    return None if value is None else str(value)


def cloud_number(config: dict[str, Any]) -> str:
    """The `phone_number_id` of a Cloud API session's config, checked (a JSON number is taken too)."""
    value = config.get("phone_number_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not PHONE_NUMBER_ID.fullmatch(value.strip()):
        raise InvalidInput(
            "a Cloud API session needs config.phone_number_id: the number's id in Meta's WhatsApp Manager (digits)",
            field="config.phone_number_id",
        )
    return value.strip()


def lock_id(key: SessionKey) -> int:
    """The session's advisory lock key (64 bits of a hash of its ids)."""
    digest = hashlib.sha256(f"whatsapp:{key.tenant_id}:{key.session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


S = SessionStatus


def service_principal(tenant_id: uuid.UUID) -> Principal:
    return Principal(tenant_id, None, SERVICE_ROLE)


def session_out(row: WhatsappSession) -> SessionOut:
    return SessionOut.model_validate(row).model_copy(update={"has_qr": bool(row.qr_code)})


def announce(session: AsyncSession, row: WhatsappSession) -> None:
    """Tell the company's staff (no QR, no config: admins fetch those)."""
    emit(
        session,
        "whatsapp.session.updated",
        session_out(row).model_dump(mode="json"),
        tenant_id=row.tenant_id,
        user_id=None,
    )


@dataclass
class LiveSession:
    key: SessionKey
    transport: Transport
    status: SessionStatus = S.STARTING


@dataclass
class WhatsappHub:
    """This process's running sessions, and the door through which transports report events."""

    db: Database
    settings: Settings
    transports: dict[str, Transport]
    keys: KeyBox
    replies: ReplyManager | None = None  # the assistant that answers on numbers that have one
    live: dict[SessionKey, LiveSession] = field(default_factory=dict)
    ingest_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Ownership: a process runs a session only while it holds the session's advisory lock on its
    # own connection; lifecycle commands for a session run elsewhere are NOTIFYed to its owner.
    owner_dsn: str | None = None
    owner: asyncpg.Connection | None = None
    owned: set[SessionKey] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    owner_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one statement at a time on it

    def transport(self, kind: str) -> Transport:
        found = self.transports.get(kind)
        if found is None:
            raise InvalidInput(
                f"transport {kind!r} is not available here (available: {', '.join(sorted(self.transports)) or 'none'})",
                field="transport",
            )
        return found

    def open_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A session's config as its transport needs it: the stored access token decrypted."""
        opened = {k: v for k, v in config.items() if k != SEALED_TOKEN}
        if isinstance(config.get(SEALED_TOKEN), str):
            opened["access_token"] = self.keys.open(config[SEALED_TOKEN])
        return opened

    async def connect_owner(self) -> None:
        """The connection that holds this process's session locks and hears lifecycle commands."""
        if self.owner_dsn is None or (self.owner is not None and not self.owner.is_closed()):
            return
        self.owner = await asyncpg.connect(
            self.owner_dsn, server_settings={"application_name": application_name(OWNER_NAME)}
        )
        await self.owner.add_listener(COMMAND_CHANNEL, self._commanded)
        self.owner.add_termination_listener(self._owner_lost)

    def _owner_lost(self, *_: Any) -> None:
        # the locks went with the connection: another process may take the sessions over now
        log.warning("whatsapp ownership connection lost; letting this process's sessions go")
        self.owner = None
        self.owned.clear()
        self._background(self.shutdown())

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _claim(self, key: SessionKey) -> bool:
        if self.owner_dsn is None or key in self.owned:
            return True  # a single-process setup owns everything it runs
        async with self.owner_lock:
            await self.connect_owner()
            assert self.owner is not None
            if await self.owner.fetchval("SELECT pg_try_advisory_lock($1)", lock_id(key)):
                self.owned.add(key)
                return True
            return False

    async def _release(self, key: SessionKey) -> None:
        if key in self.owned and self.owner is not None:
            self.owned.discard(key)
            async with self.owner_lock:
                with contextlib.suppress(Exception):
                    await self.owner.fetchval("SELECT pg_advisory_unlock($1)", lock_id(key))

    async def command(self, key: SessionKey, action: str) -> None:
        """restart / stop / forget a session wherever it runs (here, or by NOTIFY to its owner)."""
        if await self._claim(key):
            await self._perform(key, action)
            return
        await self._tell_owner(key, action)

    async def _forward_send(self, key: SessionKey, message_id: uuid.UUID) -> bool:
        """Hand a stored reply to the process running its number; False when none runs it."""
        if await self._claim(key):  # nobody held the number: it runs nowhere
            if key not in self.live:
                await self._release(key)
            return False
        await self._tell_owner(key, "send", message=str(message_id))
        return True

    async def _send_stored(self, key: SessionKey, message_id: uuid.UUID) -> None:
        principal = service_principal(key.tenant_id)
        async with self.db.transaction(principal.context()) as session:
            reply = await Inbox(session, principal).pending_reply(message_id)
        if reply is not None:
            await self.send(reply)

    async def _tell_owner(self, key: SessionKey, action: str, **extra: str) -> None:
        """NOTIFY the process that holds `key` (see `_commanded`); it acts if it still owns it."""
        payload = json.dumps({"tenant": str(key.tenant_id), "session": str(key.session_id), "action": action, **extra})
        async with self.owner_lock:
            assert self.owner is not None
            await self.owner.execute("SELECT pg_notify($1, $2)", COMMAND_CHANNEL, payload)

    def _commanded(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            key = SessionKey(uuid.UUID(message["tenant"]), uuid.UUID(message["session"]))
            action = str(message.get("action"))
            forwarded = uuid.UUID(message["message"]) if action == "send" else None
        except (ValueError, KeyError, TypeError):
            return
        if key not in self.owned:
            return
        if forwarded is not None:
            self._background(self._send_stored(key, forwarded))
        else:
            self._background(self._perform(key, action))

    async def _perform(self, key: SessionKey, action: str) -> None:
        if action == "restart":
            await self.restore(key, only_running=False)
        elif action == "stop":
            await self.stop(key)
            await self.apply(key, S.STOPPED, reason="stopped by an admin")
        elif action == "forget":
            live = self.live.get(key)
            await self.stop(key)
            if live is not None:
                await live.transport.forget(key)
            else:
                for transport in self.transports.values():
                    await transport.forget(key)
            await self._release(key)

    async def start(self, key: SessionKey, kind: str, config: dict[str, Any]) -> None:
        """Run the session in this process (it must own it: see `_claim`)."""
        transport = self.transport(kind)
        await self.stop(key)
        self.live[key] = LiveSession(key, transport)
        await self.apply(key, S.STARTING, reason=None)
        try:
            await transport.start(key, self.open_config(config), TransportEvents(self, key))
        except Exception as exc:  # a transport that cannot start fails its session, never the caller
            log.warning("whatsapp transport failed to start", session=str(key.session_id), error=str(exc))
            await self.apply(key, S.FAILED, reason=f"transport failed to start: {exc}")

    async def stop(self, key: SessionKey) -> None:
        live = self.live.pop(key, None)
        if live is not None:
            with contextlib.suppress(Exception):
                await live.transport.stop(key)

    async def shutdown(self) -> None:
        for key in list(self.live):
            await self.stop(key)
        if self.owner is not None and not self.owner.is_closed():
            self.owner.remove_termination_listener(self._owner_lost)
            with contextlib.suppress(Exception):
                await self.owner.close()

    def memory_status(self, key: SessionKey) -> SessionStatus | None:
        live = self.live.get(key)
        return live.status if live is not None else None

    async def apply(
        self,
        key: SessionKey,
        target: SessionStatus,
        *,
        reason: str | None,
        qr: str | None = None,
        phone_number: str | None = None,
        deactivate: bool = False,
        verified_number: str | None = None,
        unverify: bool = False,
    ) -> bool:
        """Move the session's row to `target` if the state machine allows it; announce it.

        `verified_number`: the Graph API accepted the row's token for this Cloud API number, which
        makes the row the number's (its webhooks reach it) unless another company's row holds it
        verified already: then this row FAILS. `unverify`: the Graph API refused the token."""
        try:
            return await self._apply(
                key,
                target,
                reason=reason,
                qr=qr,
                phone_number=phone_number,
                deactivate=deactivate,
                verified_number=verified_number,
                unverify=unverify,
            )
        except IntegrityError as exc:
            if verified_number is None or not violated(exc, VERIFIED_NUMBER_INDEX):
                raise
        log.warning("whatsapp number already verified by another session", session=str(key.session_id))
        return await self._apply(key, S.FAILED, reason=NUMBER_TAKEN, unverify=True)

    async def _apply(
        self,
        key: SessionKey,
        target: SessionStatus,
        *,
        reason: str | None,
        qr: str | None = None,
        phone_number: str | None = None,
        deactivate: bool = False,
        verified_number: str | None = None,
        unverify: bool = False,
    ) -> bool:
        async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
            row = await session.scalar(
                select(WhatsappSession)
                .where(WhatsappSession.tenant_id == key.tenant_id, WhatsappSession.id == key.session_id)
                .with_for_update()
            )
            if row is None:
                return False
            current = S(row.status)
            if not can_move(current, target):
                log.info("whatsapp status change refused", session=str(key.session_id), current=current, target=target)
                return False
            if verified_number is not None:
                if not row.is_active or row.transport != "cloud" or stored_number(row) != verified_number:
                    # the number changed while the Graph API was asked: the restart that follows asks again
                    log.info("whatsapp verification of a number the session no longer has", session=str(key.session_id))
                    return False
                row.verified_number = verified_number
            if unverify or deactivate:
                row.verified_number = None
            row.status = target.value
            row.status_reason = reason
            row.qr_code = qr if target is S.SCAN_QR_CODE else None
            if phone_number:
                row.phone_number = phone_number
            if target is S.WORKING:
                row.last_seen = datetime.now(UTC)
            if deactivate:
                row.is_active = False
            await session.flush()
            await session.refresh(row)
            announce(session, row)
        live = self.live.get(key)
        if live is not None:
            live.status = target
        return True

    async def receive(self, key: SessionKey, inbound: InboundMessage) -> Received | None:
        """A customer's message: contact, open conversation and message stored (once), staff told."""
        async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
            row = await session.get(WhatsappSession, (key.tenant_id, key.session_id))
            if row is None or not row.is_active:
                log.warning("whatsapp message for an unknown or removed session", session=str(key.session_id))
                return None
            words = row.config.get("handoff_keywords") or DEFAULT_HANDOFF_WORDS
            principal = service_principal(key.tenant_id)
            received = await Inbox(session, principal).receive(
                row.id, row.assistant_id, tuple(str(w) for w in words), inbound
            )
            if received.message_id:
                WHATSAPP_MESSAGES.labels(row.transport, "in").inc()
            bot_reply = None
            if received.message_id and received.bot_enabled and row.assistant_id and self.replies is not None:
                chat = ChatService(session, principal, self.settings)
                if await chat.streaming_reply(received.conversation_id) is None:  # one answer at a time
                    placeholder = await chat.add_reply_placeholder(
                        received.conversation_id, {"assistant_id": str(row.assistant_id), "author": "bot"}
                    )
                    bot_reply = placeholder.id
        if bot_reply is not None and self.replies is not None:
            assert row.assistant_id is not None
            await self.replies.spawn(principal, received.conversation_id, bot_reply, row.assistant_id)
        return received

    async def bot_reply_completed(
        self, principal: Principal, conversation_id: uuid.UUID, reply_id: uuid.UUID, text: str
    ) -> None:
        """A bot reply was written (ReplyManager's completion hook): send it to the customer."""
        if not principal.is_service:
            return
        async with self.db.transaction(principal.context()) as session:
            outgoing = await Inbox(session, principal).bot_reply_ready(conversation_id, reply_id)
        if outgoing is not None:
            await self.send(outgoing)

    async def receipt(self, key: SessionKey, external_id: str, status: str) -> bool:
        async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
            return await Inbox(session, service_principal(key.tenant_id)).apply_receipt(external_id, status)

    async def send(self, reply: OutgoingReply) -> None:
        """After the reply was stored: send it, and record the outcome on the message (never lost)."""
        key = SessionKey(reply.tenant_id, reply.whatsapp_session_id)
        external_id: str | None = None
        error: str | None = None
        kind = "unknown"
        try:
            async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                row = await session.get(WhatsappSession, (key.tenant_id, key.session_id))
                if row is None or not row.is_active:
                    raise RuntimeError("the WhatsApp number was removed")
                kind, config = row.transport, dict(row.config)
            transport = self.transport(kind)
            if not transport.sends_from_any_process and key not in self.live:
                if await self._forward_send(key, reply.message_id):
                    return  # the owner sends it and records the outcome
                raise RuntimeError("the WhatsApp number is not connected")
            if self.memory_status(key) is not S.WORKING and not transport.sends_from_any_process:
                raise RuntimeError("the WhatsApp number is not connected")
            external_id = await transport.send_text(key, self.open_config(config), reply.to_wa_id, reply.text)
        except Exception as exc:
            error = str(exc) or exc.__class__.__name__
            log.warning("whatsapp send failed", message=str(reply.message_id), error=error)
        WHATSAPP_MESSAGES.labels(kind, "out" if error is None else "out_failed").inc()
        async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
            await Inbox(session, service_principal(key.tenant_id)).mark_sent(reply.message_id, external_id, error)

    def wake_ingest(self) -> None:
        self.ingest_ready.set()

    async def ingest(self, handle: Callable[[SessionKey, Any], Awaitable[None]]) -> None:
        """Work off queued webhook deliveries (from any process): a sender's deliveries in order,
        different senders side by side; each row deleted once handled, claimed again if not."""
        await work_when_woken(
            self.ingest_ready, INGEST_POLL_SECONDS, partial(self._ingest_batch, handle), name="whatsapp webhook queue"
        )

    async def _ingest_batch(self, handle: Callable[[SessionKey, Any], Awaitable[None]]) -> int:
        async with self.db.transaction() as session:
            rows = await driver(session).fetch(
                "SELECT * FROM papo_claim_webhook_deliveries($1, $2)",
                INGEST_BATCH,
                self.settings.whatsapp_webhook_max_attempts,
            )
        lanes: dict[tuple[uuid.UUID, str], list[Any]] = {}
        for row in rows:
            stored = row["delivery_payload"]  # decoded JSON (the engine's codec), or its text
            payload = json.loads(stored) if isinstance(stored, str | bytes) else stored
            messages = payload.get("messages") if isinstance(payload, dict) else None
            senders = [m.get("from") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
            lanes.setdefault((row["delivery_session_id"], str(senders[0] if senders else "")), []).append(
                (row, payload)
            )

        async def lane(items: list[Any]) -> None:
            for row, payload in items:
                key = SessionKey(row["delivery_tenant_id"], row["delivery_session_id"])
                try:
                    await handle(key, payload)
                except Exception as exc:
                    await self._delivery_failed(key, row["delivery_id"], row["delivery_attempts"], exc)
                    continue
                async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                    await driver(session).execute(
                        "DELETE FROM whatsapp_webhook_deliveries WHERE tenant_id = $1 AND id = $2",
                        key.tenant_id,
                        row["delivery_id"],
                    )

        await asyncio.gather(*(lane(items) for items in lanes.values()))
        return len(rows)

    async def _delivery_failed(self, key: SessionKey, delivery_id: int, attempts: int, exc: Exception) -> None:
        """Record a failed attempt: tried again after a growing pause, or, out of attempts, kept as a
        dead letter for the operator (`papo whatsapp dead-letters` / `replay`)."""
        dead = attempts >= self.settings.whatsapp_webhook_max_attempts
        pause = min(self.settings.whatsapp_webhook_retry_seconds * 2 ** min(attempts - 1, 20), MAX_RETRY_SECONDS)
        # the driver's message, not SQLAlchemy's wrapper (which quotes the statement's parameters)
        cause = getattr(exc, "orig", None) or exc
        error = f"{cause.__class__.__name__}: {cause}"[:1000]
        if dead:
            log.error(
                "whatsapp webhook delivery failed for the last time; it is a dead letter",
                delivery=delivery_id,
                attempts=attempts,
                exc_info=exc,
            )
        else:
            log.warning(
                "whatsapp webhook delivery failed; it will be retried",
                delivery=delivery_id,
                attempts=attempts,
                retry_in_seconds=pause,
                exc_info=exc,
            )
        try:
            async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                await driver(session).execute(
                    "UPDATE whatsapp_webhook_deliveries SET claimed_at = NULL, last_error = $3, "
                    "retry_at = now() + make_interval(secs => $4), dead_at = CASE WHEN $5 THEN now() END "
                    "WHERE tenant_id = $1 AND id = $2",
                    key.tenant_id,
                    delivery_id,
                    error,
                    pause,
                    dead,
                )
        except Exception as failure:  # its claim expires instead: retried, or dead once out of attempts
            log.warning("whatsapp webhook delivery failure could not be recorded", error=str(failure))

    async def heartbeat(self) -> None:
        """Keep `last_seen` of the sessions this process runs fresh, so other processes (and sync)
        can tell a session that is running somewhere from one nobody runs."""
        while True:
            await asyncio.sleep(self.settings.whatsapp_heartbeat_seconds)
            if self.settings.whatsapp_adopt_orphans:
                with contextlib.suppress(Exception):
                    await self.load_existing_sessions()  # sessions whose process died come back here
            for key, live in list(self.live.items()):
                if live.status is not S.WORKING:
                    continue
                with contextlib.suppress(Exception):
                    async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                        await driver(session).execute(
                            "UPDATE whatsapp_sessions SET last_seen = now() WHERE tenant_id = $1 AND id = $2",
                            key.tenant_id,
                            key.session_id,
                        )

    async def load_existing_sessions(self) -> dict[str, int]:
        """Seed's loadExistingSessions: at start-up, every active session of every company comes back
        (in the background, each on its own: one that fails does not stop the others)."""
        async with self.db.transaction() as session:
            rows = await driver(session).fetch("SELECT * FROM papo_active_whatsapp_sessions()")
        keys = [SessionKey(r["wa_tenant_id"], r["wa_session_id"]) for r in rows]
        keys = [key for key in keys if key not in self.live]
        results = await asyncio.gather(*(self.restore(key) for key in keys), return_exceptions=True)
        restored = sum(1 for result in results if result is True)
        if restored:
            log.info("whatsapp sessions restored", restored=restored)
        return {"restored": restored, "elsewhere_or_idle": len(keys) - restored}

    async def restore(self, key: SessionKey, *, only_running: bool = True) -> bool:
        """Seed's restoreSessionFromDatabase: start a stored session again with its credentials, if
        no other process runs it. At start-up only sessions that were running come back (one an admin
        stopped, or that was logged out or failed, stays as it is)."""
        try:
            async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                row = await session.get(WhatsappSession, (key.tenant_id, key.session_id))
                if row is None or not row.is_active:
                    return False
                if only_running and S(row.status) not in RUNNING:
                    return False
                kind, config = row.transport, dict(row.config)
            if not await self._claim(key):
                return False  # another process runs it
            await self.start(key, kind, config)
            return True
        except Exception as exc:
            log.warning("whatsapp session could not be restored", session=str(key.session_id), error=str(exc))
            with contextlib.suppress(Exception):
                await self.apply(key, S.FAILED, reason=f"could not be restored: {exc}")
            return False


class TransportEvents:
    """What a transport calls; each maps to a move of the state machine (see status.py)."""

    def __init__(self, hub: WhatsappHub, key: SessionKey) -> None:
        self.hub = hub
        self.key = key

    async def qr(self, code: str) -> None:
        await self.hub.apply(self.key, S.SCAN_QR_CODE, reason=None, qr=code)

    async def paired(self, phone_number: str) -> None:
        await self.hub.apply(self.key, S.STARTING, reason="paired", phone_number=phone_number)

    async def connected(self) -> None:
        await self.hub.apply(self.key, S.WORKING, reason=None)

    async def disconnected(self, reason: str) -> None:
        await self.hub.apply(self.key, S.STARTING, reason=f"disconnected: {reason}; reconnecting")

    async def logged_out(self, reason: str) -> None:
        live = self.hub.live.pop(self.key, None)
        if live is not None:
            await live.transport.forget(self.key)
        await self.hub.apply(self.key, S.STOPPED, reason=f"logged out: {reason}")

    async def failed(self, reason: str) -> None:
        await self.hub.apply(self.key, S.FAILED, reason=reason)

    async def verified(self, phone_number_id: str) -> None:
        await self.hub.apply(self.key, S.WORKING, reason=None, verified_number=phone_number_id)

    async def rejected(self, reason: str) -> None:
        await self.hub.apply(self.key, S.FAILED, reason=reason, unverify=True)

    async def message(self, inbound: InboundMessage) -> None:
        await self.hub.receive(self.key, inbound)

    async def receipt(self, external_id: str, status: str) -> None:
        await self.hub.receipt(self.key, external_id, status)


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
        taken = await driver(self.db).fetchval(
            "SELECT EXISTS (SELECT 1 FROM whatsapp_sessions WHERE tenant_id = $1 AND transport = 'cloud' "
            "AND is_active AND config->>'phone_number_id' = $2 AND id IS DISTINCT FROM $3) "
            "OR papo_whatsapp_number_connected($2, $3)",
            self.principal.tenant_id,
            number,
            except_id,
        )
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
        return await self.find_one_by_company(session_id)

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
        are removed."""
        self.principal.require_admin()
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


def legacy_entries(content: str) -> list[Any]:
    """The entries of a legacy `sessions.json` (a list, a map by name, or either under "sessions")."""
    try:
        document = json.loads(content)
    except ValueError as exc:
        raise InvalidInput(f"sessions.json is not JSON: {exc}", field="file") from exc
    entries = document.get("sessions", document) if isinstance(document, dict) else document
    if isinstance(entries, dict):
        entries = [{"name": name, **(value if isinstance(value, dict) else {})} for name, value in entries.items()]
    if not isinstance(entries, list):
        raise InvalidInput("sessions.json must hold a list (or a map) of sessions", field="file")
    return entries


def _company_field(entry: Any) -> Any:
    return entry.get("companyId", entry.get("company_id")) if isinstance(entry, dict) else None


def legacy_company(entry: Any) -> str | None:
    """An entry's company (seed 004's `companyId`), as text; None when it names none usable."""
    value = _company_field(entry)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        return None
    return str(value).strip()


def legacy_companies(content: str) -> set[str]:
    """Every company the file's entries name (to be looked up before importing)."""
    return {ref for ref in map(legacy_company, legacy_entries(content)) if ref is not None}


def _company_mismatch(
    ref: str | None, matches: list[uuid.UUID], tenant_id: uuid.UUID, *, names_companies: bool
) -> str | None:
    """Why an entry naming company `ref` (which names the tenants `matches`) stays out of `tenant_id`."""
    if ref is None:
        return "no companyId, in a file whose other entries name companies" if names_companies else None
    if matches == [tenant_id]:
        return None
    if not matches:
        return f"unknown companyId {ref!r}"
    if len(matches) > 1:
        return f"companyId {ref!r} names several companies; import it by tenant id"
    return f"companyId {ref!r} is another company (tenant {matches[0]}): import it with --tenant {matches[0]}"


async def import_legacy_sessions(
    db: AsyncSession,
    principal: Principal,
    content: str,
    *,
    transport: str,
    companies: dict[str, list[uuid.UUID]] | None = None,
) -> dict[str, Any]:
    """Seed's loadLegacySessions: the old system's `sessions.json` into the principal's company;
    idempotent (a name already here is skipped), every entry judged on its own. Imported sessions are
    STOPPED until restarted (the old process's credentials are not papo's).

    An entry's `companyId` decides where it belongs: `companies` maps each one to the tenants it
    names (see `legacy_companies`). An entry of another company, or of an unknown or ambiguous one,
    is skipped with the reason, never imported here. In a file without any companyId (one
    company's) every entry is the principal's company's; in a file that names companies, an entry
    without one is skipped (whose it is cannot be told)."""
    principal.require_admin()
    entries = legacy_entries(content)
    names_companies = any(_company_field(entry) is not None for entry in entries)
    imported: list[str] = []
    skipped: list[dict[str, str]] = []
    for index, entry in enumerate(entries):
        name = entry.get("name") or entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            skipped.append({"entry": str(index), "reason": "no usable name"})
            continue
        ref = legacy_company(entry)
        if ref is None and _company_field(entry) is not None:
            skipped.append({"entry": name, "reason": "companyId is not an id"})
            continue
        matches = (companies or {}).get(ref or "", [])
        if mismatch := _company_mismatch(ref, matches, principal.tenant_id, names_companies=names_companies):
            skipped.append({"entry": name, "reason": mismatch})
            continue
        existing = await db.scalar(
            select(WhatsappSession.id).where(
                WhatsappSession.tenant_id == principal.tenant_id,
                func.lower(WhatsappSession.name) == name.strip().lower(),
            )
        )
        if existing is not None:
            skipped.append({"entry": name, "reason": "already imported"})
            continue
        legacy_status = str(entry.get("status") or "DISCONNECTED")
        status = SEED_TO_STATUS.get(legacy_status, S.STOPPED)
        row = WhatsappSession(
            tenant_id=principal.tenant_id,
            id=new_id(),
            name=name.strip(),
            phone_number=entry.get("phoneNumber") or entry.get("phone_number"),
            transport=transport,
            config={"legacy": {k: v for k, v in entry.items() if k not in ("name", "qrCode")}},
            # it is not running here yet: STOPPED until restored, whatever the old file said
            status=S.STOPPED.value,
            status_reason=f"imported from sessions.json (was {legacy_status})",
            is_active=bool(entry.get("isActive", True)) and status is not S.FAILED,
        )
        db.add(row)
        await db.flush()
        imported.append(name)
    return {"imported": imported, "skipped": skipped}


class WhatsappRuntime(Protocol):
    """What WhatsApp's endpoints need from the running process."""

    settings: Settings
    whatsapp: WhatsappHub
    limiter: RateLimiter


State = Annotated[WhatsappRuntime, Depends(current_runtime)]
