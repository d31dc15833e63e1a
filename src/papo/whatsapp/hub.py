"""The WhatsApp sessions this process runs, and the door through which their transports report.

The database row is the truth that survives restarts; `WhatsappHub` holds what this process is
running (the seed's "hybrid cache"). Every transport event moves the row through the state machine
in `status.py`, in the session's own company context, and is announced to the company's staff as
a realtime `whatsapp.session.updated` event. Which process runs a session is `ownership.py`'s
business; the webhook queue the hub works off is `ingest.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from papo.assistants.replies import ReplyManager
from papo.auth.service import Principal
from papo.blobs import BlobStore
from papo.chat.attachments import Attachments
from papo.chat.models import Attachment
from papo.chat.service import ChatService
from papo.crypto import KeyBox
from papo.db.engine import Database, driver
from papo.errors import InvalidInput
from papo.ops.metrics import WHATSAPP_MESSAGES
from papo.settings import Settings
from papo.whatsapp.inbox import DEFAULT_HANDOFF_WORDS, Inbox, OutgoingReply, Received
from papo.whatsapp.ingest import IngestQueue
from papo.whatsapp.models import WhatsappSession
from papo.whatsapp.ownership import SessionOwnership
from papo.whatsapp.rows import NUMBER_TAKEN, SEALED_TOKEN, announce, service_principal, stored_number, violated
from papo.whatsapp.status import SessionStatus, can_move
from papo.whatsapp.transports.base import InboundMessage, InboundReceipt, OutgoingMedia, SessionKey, Transport

log = structlog.get_logger(__name__)
RUNNING = frozenset({SessionStatus.STARTING, SessionStatus.SCAN_QR_CODE, SessionStatus.WORKING})
VERIFIED_NUMBER_INDEX = "uq_whatsapp_sessions_verified_number"
SPOOL_IN_MEMORY = 1024 * 1024

S = SessionStatus


@asynccontextmanager
async def spooled(blobs: BlobStore, key: str) -> AsyncIterator[IO[bytes]]:
    """A blob copied to a spooled file (memory up to a limit, then disk), at its start: what an
    upload through an SDK or HTTP form needs."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
        async for chunk in blobs.read(key):
            copy.write(chunk)
        copy.seek(0)
        yield copy


@dataclass
class LiveSession:
    key: SessionKey
    transport: Transport
    status: SessionStatus = S.STARTING
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class WhatsappHub:
    """This process's running sessions, and the door through which transports report events."""

    db: Database
    settings: Settings
    transports: dict[str, Transport]
    keys: KeyBox
    replies: ReplyManager | None = None  # the assistant that answers on numbers that have one
    blobs: BlobStore | None = None  # where files agents send are kept
    live: dict[SessionKey, LiveSession] = field(default_factory=dict)
    loading: dict[SessionKey, asyncio.Task[bool]] = field(default_factory=dict)  # see load_soon
    follow_ups: set[asyncio.Task[None]] = field(default_factory=set)  # see later
    # Ownership: a process runs a session only while it holds the session's lock (see ownership.py);
    # lifecycle commands for a session run elsewhere are sent to its owner.
    ownership: SessionOwnership = field(init=False)
    ingest: IngestQueue = field(init=False)  # the Cloud API webhook deliveries, worked off here

    def __post_init__(self) -> None:
        self.ownership = SessionOwnership(self, placeable=self.settings.whatsapp_adopt_orphans)
        self.ingest = IngestQueue(self.db, self.settings)

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

    async def command(self, key: SessionKey, action: str) -> None:
        """restart / stop / forget a session wherever it runs (here, or by NOTIFY to its owner). A
        session nobody runs that must start goes to the process running the fewest (`_placed_elsewhere`)."""
        if action == "restart" and key not in self.ownership.owned and await self._placed_elsewhere(key):
            return
        if await self.ownership.claim(key):
            await self.perform(key, action)
            return
        await self.ownership.tell_owner(key, action)

    async def _placed_elsewhere(self, key: SessionKey) -> bool:
        """True when another process should start this session (and was told so), or none can."""
        placement = await self.ownership.placement(self.settings.whatsapp_max_sessions_per_process)
        if placement.here:
            return False
        if not await self.ownership.claim(key):
            return False  # it runs somewhere already: its owner restarts it
        await self.ownership.release(key)  # it runs nowhere: hand it to the process with room
        if placement.elsewhere is not None:
            await self.ownership.tell_process(placement.elsewhere, key, "restart")
        else:
            cap = self.settings.whatsapp_max_sessions_per_process
            log.warning("no server process has room for another whatsapp session", cap=cap)
            await self.apply(key, S.STARTING, reason="looking for a server process with room")
            await self.apply(
                key, S.FAILED, reason=f"every server process runs its maximum of {cap} sessions; restart it later"
            )
        return True

    async def _forward_send(self, key: SessionKey, message_id: uuid.UUID) -> bool:
        """Hand a stored reply to the process running its number; False when none runs it."""
        if await self.ownership.claim(key):  # nobody held the number: it runs nowhere
            if key not in self.live:
                await self.ownership.release(key)
            return False
        await self.ownership.tell_owner(key, "send", message=str(message_id))
        return True

    async def send_stored(self, key: SessionKey, message_id: uuid.UUID) -> None:
        """Send a reply another process stored and handed to this one, which runs its number."""
        principal = service_principal(key.tenant_id)
        async with self.db.transaction(principal.context()) as session:
            reply = await Inbox(session, principal).pending_reply(message_id)
        if reply is not None:
            await self.send(reply)

    async def perform(self, key: SessionKey, action: str) -> None:
        """Carry out a lifecycle command (restart / stop / forget) for a session this process owns."""
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
            await self.ownership.release(key)

    async def start(self, key: SessionKey, kind: str, config: dict[str, Any]) -> None:
        """Run the session in this process (it must own it: see `SessionOwnership.claim`)."""
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

    def later(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Work that follows an event but must not hold up its worker (a transcription after a
        download); its failure is logged."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                log.exception("whatsapp follow-up failed", work=name)

        task = asyncio.create_task(logged(), name=f"papo-whatsapp-{name}")
        self.follow_ups.add(task)
        task.add_done_callback(self.follow_ups.discard)

    async def shutdown(self) -> None:
        pending = [*self.loading.values(), *self.follow_ups]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for key in list(self.live):
            await self.stop(key)
        await self.ownership.close()

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
            live.status_changed.set()
        return True

    async def receive(self, key: SessionKey, inbound: InboundMessage) -> Received | None:
        """A customer's message: contact, open conversation and message stored (once), staff told."""
        return (await self.take_in(key, [inbound]))[0]

    async def take_in(
        self, key: SessionKey, arrivals: Sequence[InboundMessage | InboundReceipt]
    ) -> list[Received | None]:
        """A number's customer messages and receipts, in their order, in one transaction: contacts,
        open conversations and messages stored (each message once), receipts applied, staff told;
        then the bot's replies started. Should one fail, none of them is stored (the caller may try
        them one by one). What each message became (None for a receipt, or when the number is gone)."""
        principal = service_principal(key.tenant_id)
        results: list[Received | None] = []
        replies: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = []  # (conversation, placeholder, assistant)
        async with self.db.transaction(principal.context()) as session:
            row = await session.get(WhatsappSession, (key.tenant_id, key.session_id))
            if row is None or not row.is_active:
                log.warning("whatsapp message for an unknown or removed session", session=str(key.session_id))
                return [None] * len(arrivals)
            words = tuple(str(w) for w in row.config.get("handoff_keywords") or DEFAULT_HANDOFF_WORDS)
            inbox = Inbox(session, principal)
            chat = ChatService(session, principal, self.settings)
            assistant = row.assistant_id if self.replies is not None else None  # who answers, if anyone
            # receipts one by one, each run of messages between them together
            for is_receipt, run in itertools.groupby(arrivals, key=lambda arrival: isinstance(arrival, InboundReceipt)):
                if is_receipt:
                    for receipt in run:
                        assert isinstance(receipt, InboundReceipt)
                        await inbox.apply_receipt(receipt.external_id, receipt.status)
                        results.append(None)
                    continue
                messages = [arrival for arrival in run if isinstance(arrival, InboundMessage)]
                for received in await inbox.receive(row.id, row.assistant_id, words, messages):
                    results.append(received)
                    answers = received.message_id is not None and received.bot_enabled
                    # one answer at a time
                    if (
                        assistant is not None
                        and answers
                        and await chat.streaming_reply(received.conversation_id) is None
                    ):
                        placeholder = await chat.add_reply_placeholder(
                            received.conversation_id, {"assistant_id": str(assistant), "author": "bot"}
                        )
                        replies.append((received.conversation_id, placeholder.id, assistant))
        WHATSAPP_MESSAGES.labels(row.transport, "in").inc(sum(1 for r in results if r and r.message_id))
        for conversation_id, reply_id, assistant_id in replies:
            if self.replies is not None:
                await self.replies.spawn(principal, conversation_id, reply_id, assistant_id)
        for result in results:  # sent apart: a slow Graph API must not hold up the messages that follow
            if result is not None and result.text_only_notice:
                self.later(self._text_only_notice(principal, result.conversation_id, row.transport), "text-only-notice")
        return results

    async def _text_only_notice(self, principal: Principal, conversation_id: uuid.UUID, transport: str) -> None:
        async with self.db.transaction(principal.context()) as session:
            notice, _ = await Inbox(session, principal).queue_reply(
                conversation_id, self.settings.whatsapp_text_only_notice, transport
            )
        await self.send(notice)

    async def voice_note_stored(self, tenant_id: uuid.UUID, note: Attachment) -> None:
        """A customer's voice note is in the blob store. Where the number has an assistant, its
        provider transcribes it (shown under the player, for whoever answers); where the bot answers,
        it answers the transcript, and a provider that cannot transcribe means the customer is told
        the bot reads text only, and the conversation waits for a person."""
        principal = service_principal(tenant_id)
        async with self.db.transaction(principal.context()) as session:
            inbox = Inbox(session, principal)
            conversation = await inbox.conversation(note.session_id)
            number = await session.get(WhatsappSession, (tenant_id, conversation["whatsapp_session_id"]))
        if number is None or number.assistant_id is None or self.replies is None or self.blobs is None:
            return  # no provider to transcribe with: a person listens
        if note.blob_key is None:
            return
        async with spooled(self.blobs, note.blob_key) as audio:
            name = note.file_name or f"voice-{note.id.hex[:8]}.ogg"
            said = await self.replies.transcribe(principal, number.assistant_id, audio, name, note.mime_type or "")
        bot_answers = conversation["bot_enabled"] and not note.caption  # else a person answers (or the bot did)
        if said is None and not bot_answers:
            return
        if said is None:
            async with self.db.transaction(principal.context()) as session:
                await Inbox(session, principal).update(
                    note.session_id, {"ticket_status": "pending", "bot_enabled": False}
                )
            await self._text_only_notice(principal, note.session_id, number.transport)
            return
        reply_id = None
        async with self.db.transaction(principal.context()) as session:
            await Attachments(session, principal).set_transcript(note.id, said)
            chat = ChatService(session, principal, self.settings)
            if bot_answers and await chat.streaming_reply(note.session_id) is None:  # one answer at a time
                placeholder = await chat.add_reply_placeholder(
                    note.session_id, {"assistant_id": str(number.assistant_id), "author": "bot"}
                )
                reply_id = placeholder.id
        if reply_id is not None:
            await self.replies.spawn(principal, note.session_id, reply_id, number.assistant_id)

    async def bot_reply_completed(
        self, principal: Principal, conversation_id: uuid.UUID, reply_id: uuid.UUID, text: str, hand_off: bool
    ) -> None:
        """A bot reply was written (ReplyManager's completion hook): send it to the customer, and when
        the bot did not find the answer in the company's documents, hand the conversation to a person."""
        if not principal.is_service:
            return
        async with self.db.transaction(principal.context()) as session:
            inbox = Inbox(session, principal)
            outgoing = await inbox.bot_reply_ready(conversation_id, reply_id)
            if outgoing is not None and hand_off:
                await inbox.hand_off(conversation_id)
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
                if not await self.load_for_use(key):
                    raise RuntimeError("the WhatsApp number is not connected")
            if self.memory_status(key) is not S.WORKING and not transport.sends_from_any_process:
                raise RuntimeError("the WhatsApp number is not connected")
            if reply.attachment_id is None:
                external_id = await transport.send_text(key, self.open_config(config), reply.to_wa_id, reply.text)
            else:
                external_id = await self._send_file(transport, key, self.open_config(config), reply)
        except Exception as exc:
            error = str(exc) or exc.__class__.__name__
            log.warning("whatsapp send failed", message=str(reply.message_id), error=error)
        WHATSAPP_MESSAGES.labels(kind, "out" if error is None else "out_failed").inc()
        async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
            await Inbox(session, service_principal(key.tenant_id)).mark_sent(reply.message_id, external_id, error)

    async def _send_file(
        self, transport: Transport, key: SessionKey, config: dict[str, Any], reply: OutgoingReply
    ) -> str:
        """A stored file, copied from the blob store to a spooled file (memory up to a limit, then
        disk) for the transport to upload."""
        assert reply.attachment_id is not None
        if self.blobs is None:
            raise RuntimeError("this process has no blob store")
        principal = service_principal(key.tenant_id)
        async with self.db.transaction(principal.context()) as session:
            file = await Attachments(session, principal).get(reply.attachment_id)
        if file.blob_key is None or file.mime_type is None:
            raise RuntimeError("the file to send is not stored")
        async with spooled(self.blobs, file.blob_key) as content:
            media = OutgoingMedia(file.kind, file.mime_type, file.file_name, file.caption, content)
            return await transport.send_media(key, config, reply.to_wa_id, media)

    async def heartbeat(self) -> None:
        """Keep `last_seen` of the sessions this process runs fresh, so other processes (and sync)
        can tell a session that is running somewhere from one nobody runs."""
        while True:
            await asyncio.sleep(self.settings.whatsapp_heartbeat_seconds)
            if self.settings.whatsapp_adopt_orphans:
                with contextlib.suppress(Exception):
                    await self.load_existing_sessions(adopting=True)  # sessions whose process died
            for key, live in list(self.live.items()):
                if live.status is not S.WORKING:
                    continue
                with contextlib.suppress(Exception):
                    async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                        await session.execute(
                            update(WhatsappSession)
                            .where(WhatsappSession.tenant_id == key.tenant_id, WhatsappSession.id == key.session_id)
                            .values(last_seen=func.now())
                        )

    async def load_existing_sessions(self, *, adopting: bool = False) -> dict[str, int]:
        """Seed's loadExistingSessions: at start-up, every active session of every company comes back
        (in the background, each on its own: one that fails does not stop the others), up to the
        per-process cap. `adopting` (each heartbeat): the sessions whose process died, one at a time,
        each by a process among those running the fewest."""
        async with self.db.transaction() as session:
            rows = await driver(session).fetch("SELECT * FROM papo_active_whatsapp_sessions()")
        keys = [SessionKey(r["wa_tenant_id"], r["wa_session_id"]) for r in rows]
        keys = [key for key in keys if key not in self.live]
        if adopting:
            results: list[bool | BaseException] = []
            for key in keys:
                try:
                    results.append(await self.adopt(key))
                except Exception as exc:
                    results.append(exc)
        else:
            cap = self.settings.whatsapp_max_sessions_per_process
            room = max(0, cap - len(self.ownership.owned)) if cap > 0 else len(keys)
            results = await asyncio.gather(*(self.restore(key) for key in keys[:room]), return_exceptions=True)
        restored = sum(1 for result in results if result is True)
        if restored:
            log.info("whatsapp sessions restored", restored=restored)
        return {"restored": restored, "elsewhere_or_idle": len(keys) - restored}

    def load_soon(self, key: SessionKey) -> None:
        """A session used (its QR code or details asked for) that no process holds is started here,
        without making the caller wait (its next look shows the QR code)."""
        if key in self.live or key in self.loading:
            return
        task = asyncio.create_task(self.restore(key), name=f"papo-whatsapp-load-{key.slug}")
        self.loading[key] = task
        task.add_done_callback(lambda _: self.loading.pop(key, None))

    async def load_for_use(self, key: SessionKey) -> bool:
        """Seed's lazy loading: a session that should be running but that no process holds (its process
        died, or start-up has not reached it yet) is started here when it is used, and given a moment
        to connect. True when it is WORKING in this process."""
        if key not in self.live and not await self.restore(key):
            return False
        live = self.live.get(key)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.whatsapp_load_wait_seconds):
                while live is not None and live.status is S.STARTING and self.live.get(key) is live:
                    live.status_changed.clear()
                    await live.status_changed.wait()
        return self.memory_status(key) is S.WORKING

    async def adopt(self, key: SessionKey) -> bool:
        """A running session whose process died, taken over by a process among those running the
        fewest and below the cap (each process tries at its heartbeat; the lock decides ties)."""
        if key not in self.ownership.owned:
            placement = await self.ownership.placement(self.settings.whatsapp_max_sessions_per_process)
            if not placement.here:
                return False
        return await self.restore(key)

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
            cap = self.settings.whatsapp_max_sessions_per_process
            if cap > 0 and key not in self.ownership.owned and len(self.ownership.owned) >= cap:
                return False  # full: a process with room adopts it
            if not await self.ownership.claim(key):
                return False  # another process runs it
            problem = await asyncio.to_thread(self.transport(kind).credentials_problem, key)
            if problem is not None:  # this session alone fails, with the reason; the others go on
                await self.ownership.release(key)
                await self.apply(key, S.STARTING, reason="checking the stored credentials")
                await self.apply(key, S.FAILED, reason=problem)
                return False
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
