"""The WhatsApp inbox: customers' messages in, agents' replies out, tickets, handoff and receipts.

Inbound work runs in the company's context as "service" (the process running the session); agents'
calls run as themselves. Every change is announced to the company's staff (realtime, staff audience).
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.db.base import new_id
from papo.db.engine import driver
from papo.errors import Conflict, InvalidInput, NotFound
from papo.insights.service import SessionSentiment, message_sentiments, session_sentiments
from papo.realtime.service import emit
from papo.whatsapp.transports.base import InboundMessage

CONVERSATION_NOT_FOUND = "conversation not found"
DEFAULT_HANDOFF_WORDS = ("atendente", "humano", "pessoa", "agent", "human", "operator")
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)
TICKET_STATUSES = ("open", "pending", "closed")
# A receipt may only move a message forward; "failed" only before it was delivered.
DELIVERY_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}
# A conversation with its contact (fixed text, completed with fixed conditions below).
CONVERSATION_SELECT = """
SELECT c.id, c.title, c.ticket_status, c.assigned_to, c.bot_enabled, c.last_inbound_at, c.last_message_at,
       c.whatsapp_session_id, c.contact_id, k.wa_id, k.name AS contact_name, c.created_at
  FROM chat_sessions c JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
"""


def plain(row: Any) -> dict[str, Any]:
    """A database row as a dict, with its JSON columns decoded."""
    values = dict(row)
    if isinstance(values.get("metadata"), str):
        values["metadata"] = json.loads(values["metadata"])
    return values


def wire(row: Any) -> dict[str, Any]:
    """A row as an event payload (JSON types only)."""
    result: dict[str, Any] = json.loads(json.dumps(plain(row), default=str))
    return result


def _mood(found: SessionSentiment | None) -> dict[str, Any] | None:
    return None if found is None else {"average": found.average, "scored": found.scored, "last": found.last_label}


def fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))


def asks_for_a_human(text: str, words: tuple[str, ...]) -> bool:
    said = set(fold(text).replace(",", " ").replace(".", " ").replace("!", " ").replace("?", " ").split())
    return any(fold(word) in said for word in words)


@dataclass(frozen=True)
class Received:
    conversation_id: uuid.UUID
    message_id: uuid.UUID | None  # None: WhatsApp delivered this message before (nothing stored)
    handed_off: bool
    bot_enabled: bool = False


@dataclass(frozen=True)
class OutgoingReply:
    tenant_id: uuid.UUID
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    whatsapp_session_id: uuid.UUID
    to_wa_id: str
    text: str


class Inbox:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.db = session
        self.principal = principal

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        emit(self.db, event_type, data, tenant_id=self.principal.tenant_id, user_id=None)

    async def _conversation(self, conversation_id: uuid.UUID, *, lock: bool = False) -> dict[str, Any]:
        row = await driver(self.db).fetchrow(
            CONVERSATION_SELECT
            + "WHERE c.tenant_id = $1 AND c.id = $2 AND c.channel = 'whatsapp'"
            + (" FOR UPDATE OF c" if lock else ""),
            self.principal.tenant_id,
            conversation_id,
        )
        if row is None:
            raise NotFound(CONVERSATION_NOT_FOUND)
        return dict(row)

    def _announce(self, conversation: dict[str, Any]) -> None:
        self._emit("whatsapp.conversation.updated", wire(conversation))

    async def receive(
        self,
        whatsapp_session_id: uuid.UUID,
        assistant_id: uuid.UUID | None,
        handoff_words: tuple[str, ...],
        inbound: InboundMessage,
    ) -> Received:
        connection = driver(self.db)
        tenant = self.principal.tenant_id
        contact_id = await connection.fetchval(
            """
            INSERT INTO contacts (tenant_id, id, wa_id, name) VALUES ($1, $2, $3, $4)
            ON CONFLICT (tenant_id, wa_id) DO UPDATE SET name = coalesce(EXCLUDED.name, contacts.name)
            RETURNING id
            """,
            tenant,
            new_id(),
            inbound.from_wa_id,
            inbound.contact_name,
        )
        # one open conversation per number and contact (a unique index settles concurrent arrivals)
        await connection.execute(
            """
            INSERT INTO chat_sessions (tenant_id, id, title, channel, ticket_status, bot_enabled,
                                       whatsapp_session_id, contact_id, assistant_id)
            VALUES ($1, $2, $3, 'whatsapp', 'open', $4, $5, $6, $7)
            ON CONFLICT (tenant_id, whatsapp_session_id, contact_id)
              WHERE channel = 'whatsapp' AND ticket_status <> 'closed' DO NOTHING
            """,
            tenant,
            new_id(),
            inbound.contact_name or "+" + inbound.from_wa_id,
            assistant_id is not None,
            whatsapp_session_id,
            contact_id,
            assistant_id,
        )
        conversation_id = await connection.fetchval(
            "SELECT id FROM chat_sessions WHERE tenant_id = $1 AND whatsapp_session_id = $2 AND contact_id = $3 "
            "AND channel = 'whatsapp' AND ticket_status <> 'closed' FOR UPDATE",
            tenant,
            whatsapp_session_id,
            contact_id,
        )
        supported = inbound.kind == "text"
        content = inbound.text if supported else f"[unsupported message: {inbound.kind}]"
        metadata = {"wa_from": inbound.from_wa_id} | ({} if supported else {"unsupported": inbound.kind})
        message = await connection.fetchrow(
            """
            INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata, external_id)
            VALUES ($1, $2, $3, 'user', $4, 'delivered', $5, $6)
            ON CONFLICT (tenant_id, external_id) WHERE external_id IS NOT NULL DO NOTHING
            RETURNING id, session_id, role, content, status, metadata, external_id, created_at
            """,
            tenant,
            new_id(),
            conversation_id,
            content[:32_000],
            json.dumps(metadata),
            inbound.external_id,
        )
        if message is None:
            return Received(conversation_id, None, False)
        await connection.execute(
            "UPDATE chat_sessions SET last_inbound_at = now() WHERE tenant_id = $1 AND id = $2", tenant, conversation_id
        )
        conversation = await self._conversation(conversation_id)
        handed_off = bool(conversation["bot_enabled"]) and supported and asks_for_a_human(content, handoff_words)
        if handed_off:
            await connection.execute(
                "UPDATE chat_sessions SET bot_enabled = false, ticket_status = 'pending' "
                "WHERE tenant_id = $1 AND id = $2",
                tenant,
                conversation_id,
            )
            conversation = await self._conversation(conversation_id)
        self._emit("message.created", wire(message) | {"channel": "whatsapp"})
        self._announce(conversation)
        return Received(conversation_id, message["id"], handed_off, bool(conversation["bot_enabled"]) and supported)

    async def conversations(self, ticket_status: str | None, limit: int = 100) -> list[dict[str, Any]]:
        if ticket_status is not None and ticket_status not in TICKET_STATUSES:
            raise InvalidInput(f"ticket_status is one of {', '.join(TICKET_STATUSES)}", field="ticket_status")
        rows = await driver(self.db).fetch(
            CONVERSATION_SELECT
            + "WHERE c.tenant_id = $1 AND c.channel = 'whatsapp' AND ($2::text IS NULL OR c.ticket_status = $2) "
            "ORDER BY c.activity_at DESC, c.id DESC LIMIT $3",
            self.principal.tenant_id,
            ticket_status,
            limit,
        )
        moods = await session_sentiments(self.db, [row["id"] for row in rows])
        return [dict(row) | {"sentiment": _mood(moods.get(row["id"]))} for row in rows]

    async def conversation(self, conversation_id: uuid.UUID) -> dict[str, Any]:
        return await self._conversation(conversation_id)

    async def number_of(self, conversation_id: uuid.UUID) -> uuid.UUID:
        """The WhatsApp session (number) a conversation came in on."""
        session_id: uuid.UUID = (await self._conversation(conversation_id))["whatsapp_session_id"]
        return session_id

    async def messages(self, conversation_id: uuid.UUID, limit: int = 200) -> list[dict[str, Any]]:
        await self._conversation(conversation_id)
        rows = await driver(self.db).fetch(
            "SELECT id, session_id, role, content, status, metadata, external_id, delivery_status, created_at "
            "FROM messages WHERE tenant_id = $1 AND session_id = $2 ORDER BY created_at, id LIMIT $3",
            self.principal.tenant_id,
            conversation_id,
            limit,
        )
        scores = await message_sentiments(self.db, [row["id"] for row in rows])
        return [plain(row) | {"sentiment": scores.get(row["id"])} for row in rows]

    async def update(self, conversation_id: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any]:
        """Assign, close / reopen, or hand back to the bot."""
        current = await self._conversation(conversation_id, lock=True)
        status = changes.get("ticket_status", current["ticket_status"])
        if status not in TICKET_STATUSES:
            raise InvalidInput(f"ticket_status is one of {', '.join(TICKET_STATUSES)}", field="ticket_status")
        if "assigned_to" in changes and changes["assigned_to"] is not None:
            member = await driver(self.db).fetchval(
                "SELECT role::text FROM memberships WHERE tenant_id = $1 AND user_id = $2",
                self.principal.tenant_id,
                changes["assigned_to"],
            )
            if member not in ("owner", "admin", "agent"):
                raise InvalidInput("conversations are assigned to the company's agents", field="assigned_to")
        try:
            await driver(self.db).execute(
                "UPDATE chat_sessions SET ticket_status = $3, assigned_to = $4, bot_enabled = $5 "
                "WHERE tenant_id = $1 AND id = $2",
                self.principal.tenant_id,
                conversation_id,
                status,
                changes.get("assigned_to", current["assigned_to"]),
                changes.get("bot_enabled", current["bot_enabled"]),
            )
        except Exception as exc:  # reopening while the contact has another open conversation
            if "uq_chat_sessions_open_conversation" in str(exc):
                raise Conflict("this contact already has an open conversation on this number") from exc
            raise
        conversation = await self._conversation(conversation_id)
        self._announce(conversation)
        return conversation

    async def queue_reply(
        self, conversation_id: uuid.UUID, text: str, transport: str
    ) -> tuple[OutgoingReply, dict[str, Any]]:
        """Store an agent's reply (delivery pending) before it is sent, so a failure never loses it;
        returns what to send and the stored message."""
        if not text.strip():
            raise InvalidInput("a reply needs some text", field="content")
        conversation = await self._conversation(conversation_id, lock=True)
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
        message = await driver(self.db).fetchrow(
            """
            INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata, delivery_status)
            VALUES ($1, $2, $3, 'assistant', $4, 'sent', $5, 'pending')
            RETURNING id, session_id, role, content, status, metadata, external_id, delivery_status, created_at
            """,
            self.principal.tenant_id,
            new_id(),
            conversation_id,
            text,
            json.dumps(metadata),
        )
        assert message is not None
        self._emit("message.created", wire(message) | {"channel": "whatsapp"})
        outgoing = OutgoingReply(
            self.principal.tenant_id,
            message["id"],
            conversation_id,
            conversation["whatsapp_session_id"],
            conversation["wa_id"],
            text,
        )
        return outgoing, plain(message)

    async def pending_reply(self, message_id: uuid.UUID) -> OutgoingReply | None:
        """A stored reply still waiting to be sent (forwarded here by the process that stored it)."""
        row = await driver(self.db).fetchrow(
            """
            SELECT m.content, m.session_id, c.whatsapp_session_id, k.wa_id
              FROM messages m
              JOIN chat_sessions c ON c.tenant_id = m.tenant_id AND c.id = m.session_id AND c.channel = 'whatsapp'
              JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
             WHERE m.tenant_id = $1 AND m.id = $2 AND m.delivery_status = 'pending'
            """,
            self.principal.tenant_id,
            message_id,
        )
        if row is None:
            return None
        return OutgoingReply(
            self.principal.tenant_id,
            message_id,
            row["session_id"],
            row["whatsapp_session_id"],
            row["wa_id"],
            row["content"],
        )

    async def bot_reply_ready(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> OutgoingReply | None:
        """The bot finished a reply in a WhatsApp conversation: mark it to be sent, say where to."""
        row = await driver(self.db).fetchrow(
            """
            UPDATE messages m SET delivery_status = 'pending'
              FROM chat_sessions c JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
             WHERE m.tenant_id = $1 AND m.id = $2 AND m.session_id = $3 AND m.delivery_status IS NULL
               AND c.tenant_id = m.tenant_id AND c.id = m.session_id AND c.channel = 'whatsapp'
            RETURNING m.content, c.whatsapp_session_id, k.wa_id
            """,
            self.principal.tenant_id,
            message_id,
            conversation_id,
        )
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
        status = "sent" if error is None else "failed"
        row = await driver(self.db).fetchrow(
            "UPDATE messages SET external_id = coalesce($3, external_id), delivery_status = $4, "
            "status = CASE WHEN $4 = 'failed' THEN 'error'::message_status ELSE status END, "
            "metadata = CASE WHEN $5::text IS NULL THEN metadata "
            "ELSE metadata || jsonb_build_object('error', $5::text) END "
            "WHERE tenant_id = $1 AND id = $2 AND delivery_status = 'pending' "
            "RETURNING id, session_id, delivery_status, status",
            self.principal.tenant_id,
            message_id,
            external_id,
            status,
            error,
        )
        if row is not None:
            self._emit("message.status_changed", wire(row))

    async def apply_receipt(self, external_id: str, status: str) -> bool:
        """A delivery receipt; only ever moves forward (out-of-order receipts change nothing)."""
        if status not in (*DELIVERY_RANK, "failed"):
            return False
        row = await driver(self.db).fetchrow(
            """
            UPDATE messages SET delivery_status = $3,
                   status = CASE WHEN $3 = 'failed' THEN 'error'::message_status
                                 WHEN $3 IN ('delivered', 'read') THEN 'delivered'::message_status ELSE status END
             WHERE tenant_id = $1 AND external_id = $2 AND CASE
                   WHEN $3 = 'failed' THEN coalesce(delivery_status, 'pending') IN ('pending', 'sent')
                   ELSE coalesce(delivery_status, 'pending') <> 'failed'
                        AND array_position(ARRAY['pending', 'sent', 'delivered', 'read'], $3)
                          > array_position(ARRAY['pending', 'sent', 'delivered', 'read'],
                                           coalesce(delivery_status, 'pending'))
                   END
            RETURNING id, session_id, delivery_status, status
            """,
            self.principal.tenant_id,
            external_id,
            status,
        )
        if row is None:
            return False
        self._emit("message.status_changed", wire(row))
        return True
