"""The WhatsApp inbox: customers' messages in, agents' replies out, tickets, handoff and receipts.

Inbound work runs in the company's context as "service" (the process running the session); agents'
calls run as themselves. Every change is announced to the company's staff (realtime, staff audience).
The conversations and messages are chat's rows: they are stored through papo.chat.channel, which
also announces messages in chat's one shape; the rules of the channel stay here.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth import service as auth_service
from papo.auth.models import STAFF_ROLES
from papo.auth.service import Principal
from papo.chat.attachments import FILE_KINDS, Attachments, StoredFile
from papo.chat.channel import ChannelArrival, ChannelConversations, wire
from papo.errors import Conflict, InvalidInput, NotFound
from papo.insights.service import SessionSentiment, message_sentiments, session_sentiments
from papo.realtime.service import emit
from papo.whatsapp.teams import Teams
from papo.whatsapp.transports.base import InboundMessage

VOICE_KINDS = ("voice", "audio")
DEFAULT_HANDOFF_WORDS = ("atendente", "humano", "pessoa", "agent", "human", "operator")
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)
INBOX_VIEWS = ("all", "mine", "team", "unassigned")
TICKET_STATUSES = ("open", "pending", "closed")
# A receipt may only move a message forward; "failed" only before it was delivered.
DELIVERY_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}


def _mood(found: SessionSentiment | None) -> dict[str, Any] | None:
    return None if found is None else {"average": found.average, "scored": found.scored, "last": found.last_label}


MAX_QUERY_CHARS = 200
LABEL = re.compile(r"^[\w-]{1,32}$")
MAX_LABELS = 10


def clean_labels(labels: list[str]) -> list[str]:
    """Labels as the inbox keeps them: lowercase words (letters, digits, _ and -), each once, at most 10."""
    cleaned = list(dict.fromkeys(label.strip().lower() for label in labels if label.strip()))
    if len(cleaned) > MAX_LABELS or not all(LABEL.match(label) for label in cleaned):
        raise InvalidInput(
            f"at most {MAX_LABELS} labels, each a word of up to 32 letters, digits, _ or -", field="labels"
        )
    return cleaned


def fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))


def asks_for_a_human(text: str, words: tuple[str, ...]) -> bool:
    said = set(fold(text).replace(",", " ").replace(".", " ").replace("!", " ").replace("?", " ").split())
    return any(fold(word) in said for word in words)


def _kept(message: InboundMessage) -> bool:
    """Whether papo keeps what the customer sent (a text, or something with a file or a location);
    anything else is stored as a note that an unsupported kind arrived."""
    return message.kind == "text" or bool(message.attachments)


@dataclass(frozen=True)
class Received:
    conversation_id: uuid.UUID
    message_id: uuid.UUID | None  # None: WhatsApp delivered this message before (nothing stored)
    handed_off: bool
    bot_enabled: bool = False
    text_only_notice: bool = False  # the bot tells the customer it reads text only; a person takes over


@dataclass(frozen=True)
class OutgoingReply:
    tenant_id: uuid.UUID
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    whatsapp_session_id: uuid.UUID
    to_wa_id: str
    text: str
    attachment_id: uuid.UUID | None = None  # a file to send, with `text` as its caption


class Inbox:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.db = session
        self.principal = principal
        self.store = ChannelConversations(session, principal)

    def _announce(self, conversation: dict[str, Any]) -> None:
        emit(
            self.db,
            "whatsapp.conversation.updated",
            wire(conversation),
            tenant_id=self.principal.tenant_id,
            user_id=None,
        )

    async def receive(
        self,
        whatsapp_session_id: uuid.UUID,
        assistant_id: uuid.UUID | None,
        handoff_words: tuple[str, ...],
        inbound: Sequence[InboundMessage],
    ) -> list[Received]:
        """Customers' messages on a number, in order: stored by one round trip, then each announced and
        put through the inbox's rules as if it had arrived alone."""
        arrivals = [self._arrival(message) for message in inbound]
        taken = await self.store.take_in(whatsapp_session_id, assistant_id, arrivals)
        handed_off: set[uuid.UUID] = set()  # this run's handoffs (later rows were read before them)
        received = []
        for message, arrival, (conversation, row) in zip(inbound, arrivals, taken, strict=True):
            if row is None:
                received.append(Received(conversation["id"], None, False))
                continue
            await self.store.announce_inbound(row, arrival.attachments)
            if conversation["id"] in handed_off:
                conversation = await self.store.find(conversation["id"])
            received.append(
                await self._decide(conversation, row["id"], message, arrival.content, assistant_id, handoff_words)
            )
            if received[-1].handed_off:
                handed_off.add(conversation["id"])
        return received

    @staticmethod
    def _arrival(message: InboundMessage) -> ChannelArrival:
        kept = _kept(message)
        return ChannelArrival(
            message.from_wa_id,
            message.contact_name,
            message.external_id,
            message.text if kept else f"[unsupported message: {message.kind}]",
            {"wa_from": message.from_wa_id} | ({} if kept else {"unsupported": message.kind}),
            message.attachments,
        )

    async def _decide(
        self,
        conversation: dict[str, Any],
        message_id: uuid.UUID,
        inbound: InboundMessage,
        content: str,
        assistant_id: uuid.UUID | None,
        handoff_words: tuple[str, ...],
    ) -> Received:
        """The inbox's rules for a customer's message just stored: who answers it, and whether the
        customer is told the bot reads text only."""
        conversation_id = conversation["id"]
        bot_on = bool(conversation["bot_enabled"])
        # the bot answers words (a text, a caption); a file alone goes to a person, and the customer is told
        supported = _kept(inbound) and bool(content.strip())
        files = [a.kind for a in inbound.attachments if a.kind in FILE_KINDS]
        # a voice note waits for its transcript (papo.whatsapp.hub.voice_note_stored decides then)
        transcribable = assistant_id is not None and bool(files) and all(k in VOICE_KINDS for k in files)
        files_only = bot_on and not supported and bool(files) and not transcribable
        handed_off = files_only or (bot_on and supported and asks_for_a_human(content, handoff_words))
        if handed_off:
            conversation = await self.hand_off(conversation_id)
        else:
            self._announce(conversation)
        bot_answers = bool(conversation["bot_enabled"]) and supported  # after a handoff, no longer
        return Received(conversation_id, message_id, handed_off, bot_answers, files_only)

    async def hand_off(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        """The bot stops answering and the conversation waits for a person (the agents' queue)."""
        await self.store.hand_off(conversation_id)
        conversation = await self.store.find(conversation_id)
        self._announce(conversation)
        return conversation

    async def conversations(
        self,
        ticket_status: str | None,
        view: str = "all",
        label: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """A ticket status's conversations, all of them, the caller's (`mine`) or nobody's (`unassigned`),
        optionally with one label or matching `query`; each with what the caller has not read (`unread`)."""
        query = (query or "").strip() or None
        if query is not None and len(query) > MAX_QUERY_CHARS:
            raise InvalidInput(f"search with at most {MAX_QUERY_CHARS} characters", field="q")
        if ticket_status is not None and ticket_status not in TICKET_STATUSES:
            raise InvalidInput(f"ticket_status is one of {', '.join(TICKET_STATUSES)}", field="ticket_status")
        if view not in INBOX_VIEWS:
            raise InvalidInput(f"view is one of {', '.join(INBOX_VIEWS)}", field="view")
        mine = self.principal.user_id if view == "mine" else None
        if view in ("mine", "team") and self.principal.user_id is None:
            raise InvalidInput("an API key has no conversations or teams of its own", field="view")
        teams = None
        if view == "team":
            assert self.principal.user_id is not None
            teams = await Teams(self.db, self.principal).of_member(self.principal.user_id)
        rows = await self.store.find_all(
            ticket_status,
            limit,
            assigned_to=mine,
            unassigned=view == "unassigned",
            label=label,
            query=query,
            team_ids=teams,
        )
        ids = [row["id"] for row in rows]
        moods = await session_sentiments(self.db, ids)
        user_id = self.principal.user_id
        unread = await self.store.unread(ids, user_id) if user_id is not None else {}
        return [row | {"sentiment": _mood(moods.get(row["id"])), "unread": unread.get(row["id"])} for row in rows]

    async def read(self, conversation_id: uuid.UUID) -> None:
        """The caller has read the conversation up to now (an API key has no reads of its own)."""
        await self.store.find(conversation_id)
        if self.principal.user_id is not None:
            await self.store.mark_read(conversation_id, self.principal.user_id)

    async def add_note(self, conversation_id: uuid.UUID, text: str) -> dict[str, Any]:
        """A private note for the staff: never sent, never shown to the bot."""
        if not text.strip():
            raise InvalidInput("a note needs some text", field="content")
        await self.store.find(conversation_id)
        return await self.store.store_note(
            conversation_id, text.strip(), {"author": "agent", "agent_id": self.principal.user_id}
        )

    async def conversation(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        return await self.store.find(conversation_id)

    async def number_of(self, conversation_id: uuid.UUID) -> uuid.UUID:
        """The WhatsApp session (number) a conversation came in on."""
        session_id: uuid.UUID = (await self.store.find(conversation_id))["whatsapp_session_id"]
        return session_id

    async def messages(self, conversation_id: uuid.UUID, limit: int = 200) -> list[dict[str, Any]]:
        await self.store.find(conversation_id)
        rows = await self.store.messages(conversation_id, limit)
        scores = await message_sentiments(self.db, [row["id"] for row in rows])
        return [row | {"sentiment": scores.get(row["id"])} for row in rows]

    async def update(self, conversation_id: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any]:
        """Assign, close / reopen, hand back to the bot, or label."""
        current = await self.store.find(conversation_id, lock=True)
        if changes.get("labels") is not None:
            await self.store.set_labels(conversation_id, clean_labels(changes["labels"]))
        if "team_id" in changes:
            if changes["team_id"] is not None:
                try:
                    await Teams(self.db, self.principal).require(changes["team_id"])
                except NotFound as exc:
                    raise InvalidInput("no such team in this company", field="team_id") from exc
            await self.store.set_team(conversation_id, changes["team_id"])
        status = changes.get("ticket_status", current["ticket_status"])
        if status not in TICKET_STATUSES:
            raise InvalidInput(f"ticket_status is one of {', '.join(TICKET_STATUSES)}", field="ticket_status")
        if "assigned_to" in changes and changes["assigned_to"] is not None:
            try:
                assignee = await auth_service.find_member(self.db, changes["assigned_to"])
            except NotFound:
                assignee = None
            if assignee is None or assignee.role not in STAFF_ROLES:
                raise InvalidInput("conversations are assigned to the company's agents", field="assigned_to")
        await self.store.set_ticket(
            conversation_id,
            status,
            changes.get("assigned_to", current["assigned_to"]),
            changes.get("bot_enabled", current["bot_enabled"]),
        )
        conversation = await self.store.find(conversation_id)
        self._announce(conversation)
        return conversation

    async def queue_reply(
        self, conversation_id: uuid.UUID, text: str, transport: str, file: StoredFile | None = None
    ) -> tuple[OutgoingReply, dict[str, Any]]:
        """Store an agent's reply (delivery pending) before it is sent, so a failure never loses it;
        returns what to send and the stored message. With a file, `text` is its caption."""
        if not text.strip() and file is None:
            raise InvalidInput("a reply needs some text", field="content")
        conversation = await self.store.find(conversation_id, lock=True)
        if conversation["ticket_status"] == "closed":
            raise Conflict("this conversation is closed; reopen it to reply")
        last_inbound = conversation["last_inbound_at"]
        if transport == "cloud" and (
            last_inbound is None or datetime.now(UTC) - last_inbound > CUSTOMER_SERVICE_WINDOW
        ):
            raise Conflict(
                "outside WhatsApp's 24-hour customer-service window: the customer has to write first "
                "(template messages are not supported yet)"
            )
        metadata = {"author": "agent" if self.principal.user_id else "bot", "agent_id": self.principal.user_id}
        message = await self.store.store_outbound(conversation_id, text, metadata, file)
        outgoing = OutgoingReply(
            self.principal.tenant_id,
            message["id"],
            conversation_id,
            conversation["whatsapp_session_id"],
            conversation["wa_id"],
            text,
            file.attachment_id if file else None,
        )
        return outgoing, message

    async def pending_reply(self, message_id: uuid.UUID) -> OutgoingReply | None:
        """A stored reply still waiting to be sent (forwarded here by the process that stored it)."""
        row = await self.store.pending_outbound(message_id)
        if row is None:
            return None
        files = (await Attachments(self.db, self.principal).for_messages([message_id])).get(message_id, [])
        return OutgoingReply(
            self.principal.tenant_id,
            message_id,
            row["session_id"],
            row["whatsapp_session_id"],
            row["wa_id"],
            row["content"],
            files[0].id if files else None,
        )

    async def bot_reply_ready(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> OutgoingReply | None:
        """The bot finished a reply in a WhatsApp conversation: mark it to be sent, say where to."""
        row = await self.store.release_reply(conversation_id, message_id)
        if row is None:
            return None
        return OutgoingReply(
            self.principal.tenant_id,
            message_id,
            conversation_id,
            row["whatsapp_session_id"],
            row["wa_id"],
            row["content"],
        )

    async def mark_sent(self, message_id: uuid.UUID, external_id: str | None, error: str | None) -> None:
        await self.store.mark_sent(message_id, external_id, error)

    async def apply_receipt(self, external_id: str, status: str) -> bool:
        """A delivery receipt; only ever moves forward (out-of-order receipts change nothing)."""
        if status not in (*DELIVERY_RANK, "failed"):
            return False
        return await self.store.apply_receipt(external_id, status)
