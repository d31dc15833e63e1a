"""Conversations that arrive through a channel (WhatsApp): chat's sessions and messages with their
ticket and delivery columns, and the contact on the other side. This is the only SQL on those rows;
the channel's rules (handoff, the 24-hour window, who may be assigned) stay in the channel's
feature (papo.whatsapp.inbox). Messages are announced with chat's one `message.created` shape.

Runs in the company's context: as "service" for the process running the number, as themselves for
agents (row-level security lets staff see the tenant's channel conversations)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.chat.attachments import Attachments, NewAttachment, StoredFile, attachment_view
from papo.chat.models import Attachment
from papo.chat.records import message_payload
from papo.db.base import new_id
from papo.db.engine import driver
from papo.errors import Conflict, NotFound
from papo.realtime.service import emit

CONVERSATION_NOT_FOUND = "conversation not found"
# What a channel message shows: the API's message fields plus the channel's own.
MESSAGE_COLUMNS = (
    "id, session_id, role, content, status, metadata, reply_state, superseded_at, branch_of, created_at, "
    "updated_at, external_id, delivery_status"
)
# A conversation with its contact (fixed text, completed with fixed conditions below).
CONVERSATION_SELECT = """
SELECT c.id, c.title, c.ticket_status, c.assigned_to, c.bot_enabled, c.last_inbound_at, c.last_message_at,
       c.whatsapp_session_id, c.contact_id, k.wa_id, k.name AS contact_name, c.created_at, c.labels, c.team_id
  FROM chat_sessions c JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
"""
CONVERSATION_LIST = (
    CONVERSATION_SELECT  # noqa: S608  (fixed text: every value is a parameter)
    + """
 WHERE c.tenant_id = $1 AND c.channel = 'whatsapp' AND ($2::text IS NULL OR c.ticket_status = $2)
   AND ($4::text IS NULL OR c.assigned_to = $4) AND (NOT $5 OR c.assigned_to IS NULL)
   AND ($6::text IS NULL OR $6 = ANY (c.labels))
   AND ($10::uuid[] IS NULL OR c.team_id = ANY ($10))
   AND ($7::text IS NULL
        OR papo_fold(coalesce(k.name, '')) LIKE '%' || papo_fold($8) || '%'
        OR ($9 <> '' AND k.wa_id LIKE '%' || $9 || '%')
        OR EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = c.tenant_id AND m.session_id = c.id
                      AND m.search_vector @@ websearch_to_tsquery('simple', papo_fold($7))))
 ORDER BY c.activity_minute DESC, c.activity_at DESC, c.id DESC LIMIT $3
"""
)
OUTBOUND_SELECT = """
SELECT m.content, m.session_id, c.whatsapp_session_id, k.wa_id
  FROM messages m
  JOIN chat_sessions c ON c.tenant_id = m.tenant_id AND c.id = m.session_id AND c.channel = 'whatsapp'
  JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
 WHERE m.tenant_id = $1 AND m.id = $2 AND m.delivery_status = 'pending'
"""


def _like_escaped(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (its % and _ are not wildcards)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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


@dataclass(frozen=True)
class ChannelArrival:
    """A customer's message as the channel stores it."""

    wa_id: str
    contact_name: str | None
    external_id: str
    content: str
    metadata: dict[str, Any]
    attachments: tuple[NewAttachment, ...] = ()


class ChannelConversations:
    def __init__(self, session: AsyncSession, principal: Principal, channel: str = "whatsapp") -> None:
        self.db = session
        self.principal = principal
        self.channel = channel

    def _announce_message(self, row: Any, attachments: list[Attachment] | None = None) -> dict[str, Any]:
        values = plain(row) | {"attachments": [attachment_view(a) for a in attachments or []]}
        payload = message_payload(
            values,
            channel=self.channel,
            external_id=values["external_id"],
            delivery_status=values["delivery_status"],
            attachments=values["attachments"],
        )
        emit(self.db, "message.created", payload, tenant_id=self.principal.tenant_id, user_id=None)
        return values

    def _announce_status(self, row: Any) -> None:
        emit(self.db, "message.status_changed", wire(row), tenant_id=self.principal.tenant_id, user_id=None)

    async def take_in(
        self, number_id: uuid.UUID, assistant_id: uuid.UUID | None, arrivals: Sequence[ChannelArrival]
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Customers' messages on a number, in order, in one round trip (migration 0043): each one's
        contact (created, or its name refreshed) and open conversation (started if there is none,
        locked, the customer's last word stamped), and the message stored once by its channel id.
        For each, the conversation as `find` reads it after that message, and the message (None:
        delivered before), not yet announced."""
        rows = await driver(self.db).fetch(
            "SELECT * FROM papo_whatsapp_take_in($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ORDER BY n",
            self.principal.tenant_id,
            number_id,
            assistant_id,
            [a.wa_id for a in arrivals],
            [a.contact_name for a in arrivals],
            [a.contact_name or "+" + a.wa_id for a in arrivals],
            [new_id() for _ in arrivals],
            [new_id() for _ in arrivals],
            [new_id() for _ in arrivals],
            [a.external_id for a in arrivals],
            [a.content[:32_000] for a in arrivals],
            [json.dumps(a.metadata) for a in arrivals],
        )
        taken: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for row in rows:
            conversation = {key[2:]: value for key, value in row.items() if key.startswith("c_")}
            message = {key[2:]: value for key, value in row.items() if key.startswith("m_")}
            taken.append((conversation, plain(message) if message["id"] is not None else None))
        return taken

    async def announce_inbound(self, message: dict[str, Any], attachments: tuple[NewAttachment, ...]) -> dict[str, Any]:
        """A customer's message just stored by `take_in`, with what it carries, announced."""
        stored = await Attachments(self.db, self.principal).add(message, list(attachments))
        return self._announce_message(message, stored)

    async def hand_off(self, conversation_id: uuid.UUID) -> None:
        """The bot stops answering; the conversation waits for a person."""
        await driver(self.db).execute(
            "UPDATE chat_sessions SET bot_enabled = false, ticket_status = 'pending' WHERE tenant_id = $1 AND id = $2",
            self.principal.tenant_id,
            conversation_id,
        )

    async def find(self, conversation_id: uuid.UUID, *, lock: bool = False) -> dict[str, Any]:
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

    async def find_all(
        self,
        ticket_status: str | None,
        limit: int,
        *,
        assigned_to: str | None = None,
        unassigned: bool = False,
        label: str | None = None,
        query: str | None = None,
        team_ids: list[uuid.UUID] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest activity first; by ticket status, by who has them (`assigned_to`, or nobody), by label,
        and by `query`: in the contact's name or number, or in what was said (full text)."""
        rows = await driver(self.db).fetch(
            CONVERSATION_LIST,
            self.principal.tenant_id,
            ticket_status,
            limit,
            assigned_to,
            unassigned,
            label,
            query,
            _like_escaped(query or ""),
            "".join(ch for ch in query or "" if ch.isdigit()),
            team_ids,
        )
        return [dict(row) for row in rows]

    async def unread(self, conversation_ids: list[uuid.UUID], user_id: str) -> dict[uuid.UUID, int]:
        """The customer's messages since `user_id` last read each conversation (counted up to 100)."""
        rows = await driver(self.db).fetch(
            """
            SELECT s.id, (SELECT count(*) FROM (
                     SELECT 1 FROM messages m
                      WHERE m.tenant_id = $1 AND m.session_id = s.id AND m.role = 'user'
                        AND m.created_at > coalesce(r.read_at, '-infinity') LIMIT 100) said) AS unread
              FROM unnest($2::uuid[]) AS s(id)
              LEFT JOIN conversation_reads r ON r.tenant_id = $1 AND r.session_id = s.id AND r.user_id = $3
            """,
            self.principal.tenant_id,
            conversation_ids,
            user_id,
        )
        return {row["id"]: row["unread"] for row in rows}

    async def mark_read(self, conversation_id: uuid.UUID, user_id: str) -> None:
        """Read up to the newest message the reader can see, not up to now: a message being stored
        meanwhile has a later created_at than every message committed before it (migration 0001's
        trigger takes it under the conversation's lock), so it counts as unread once committed,
        even if it was inserted before this read."""
        await driver(self.db).execute(
            """
            INSERT INTO conversation_reads (tenant_id, session_id, user_id, read_at)
            VALUES ($1, $2, $3, coalesce((SELECT max(created_at) FROM messages
                                            WHERE tenant_id = $1 AND session_id = $2), '-infinity'))
            ON CONFLICT (tenant_id, session_id, user_id)
              DO UPDATE SET read_at = greatest(conversation_reads.read_at, EXCLUDED.read_at)
            """,
            self.principal.tenant_id,
            conversation_id,
            user_id,
        )

    async def set_team(self, conversation_id: uuid.UUID, team_id: uuid.UUID | None) -> None:
        await driver(self.db).execute(
            "UPDATE chat_sessions SET team_id = $3 WHERE tenant_id = $1 AND id = $2",
            self.principal.tenant_id,
            conversation_id,
            team_id,
        )

    async def set_labels(self, conversation_id: uuid.UUID, labels: list[str]) -> None:
        await driver(self.db).execute(
            "UPDATE chat_sessions SET labels = $3 WHERE tenant_id = $1 AND id = $2",
            self.principal.tenant_id,
            conversation_id,
            labels,
        )

    async def messages(self, conversation_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        rows = await driver(self.db).fetch(
            "SELECT id, session_id, role, content, status, metadata, external_id, delivery_status, created_at "
            "FROM messages WHERE tenant_id = $1 AND session_id = $2 ORDER BY created_at, id LIMIT $3",
            self.principal.tenant_id,
            conversation_id,
            limit,
        )
        attached = await Attachments(self.db, self.principal).for_messages([row["id"] for row in rows])
        return [plain(row) | {"attachments": [attachment_view(a) for a in attached.get(row["id"], [])]} for row in rows]

    async def set_ticket(
        self, conversation_id: uuid.UUID, status: str, assigned_to: str | None, bot_enabled: bool
    ) -> None:
        connection = driver(self.db)
        await connection.execute("SAVEPOINT set_ticket")
        try:
            await connection.execute(
                "UPDATE chat_sessions SET ticket_status = $3, assigned_to = $4, bot_enabled = $5 "
                "WHERE tenant_id = $1 AND id = $2",
                self.principal.tenant_id,
                conversation_id,
                status,
                assigned_to,
                bot_enabled,
            )
        except asyncpg.UniqueViolationError as exc:  # reopening while the contact has another open one
            await connection.execute("ROLLBACK TO SAVEPOINT set_ticket")
            raise Conflict("this contact already has an open conversation on this number") from exc

    async def store_outbound(
        self, conversation_id: uuid.UUID, text: str, metadata: dict[str, Any], file: StoredFile | None = None
    ) -> dict[str, Any]:
        """An agent's or the bot's message (with a file already stored), kept with delivery pending
        before it is sent, and announced."""
        row = await driver(self.db).fetchrow(
            f"""
            INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata, delivery_status)
            VALUES ($1, $2, $3, 'assistant', $4, 'sent', $5, 'pending')
            RETURNING {MESSAGE_COLUMNS}
            """,  # noqa: S608  (fixed column list)
            self.principal.tenant_id,
            new_id(),
            conversation_id,
            text,
            json.dumps(metadata),
        )
        assert row is not None
        attached = [await Attachments(self.db, self.principal).add_stored(plain(row), file)] if file else []
        return self._announce_message(row, attached)

    async def store_note(self, conversation_id: uuid.UUID, text: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """An agent's private note: in the conversation for the staff, never delivered (no delivery
        status), never shown to the bot's model (its role), and announced like any message."""
        row = await driver(self.db).fetchrow(
            f"""
            INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata)
            VALUES ($1, $2, $3, 'note', $4, 'sent', $5)
            RETURNING {MESSAGE_COLUMNS}
            """,  # noqa: S608  (fixed column list)
            self.principal.tenant_id,
            new_id(),
            conversation_id,
            text,
            json.dumps(metadata),
        )
        assert row is not None
        return self._announce_message(row, [])

    async def pending_outbound(self, message_id: uuid.UUID) -> dict[str, Any] | None:
        """A stored message still waiting to be sent, with where to."""
        row = await driver(self.db).fetchrow(OUTBOUND_SELECT, self.principal.tenant_id, message_id)
        return dict(row) if row is not None else None

    async def release_reply(self, conversation_id: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any] | None:
        """A finished bot reply becomes pending delivery; with where to send it (None: not such a reply)."""
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
        return dict(row) if row is not None else None

    async def mark_sent(self, message_id: uuid.UUID, external_id: str | None, error: str | None) -> None:
        status = "sent" if error is None else "failed"
        row = await driver(self.db).fetchrow(
            "UPDATE messages SET external_id = coalesce($3, external_id), delivery_status = $4, "
            "status = CASE WHEN $4 = 'failed' THEN 'error'::message_status ELSE status END, "
            "metadata = CASE WHEN $5::text IS NULL THEN metadata "
            "ELSE metadata || jsonb_build_object('error', $5::text) END "
            "WHERE tenant_id = $1 AND id = $2 AND delivery_status = 'pending' "
            "RETURNING id, session_id, delivery_status, status, metadata->>'error' AS error",
            self.principal.tenant_id,
            message_id,
            external_id,
            status,
            error,
        )
        if row is not None:
            self._announce_status(row)

    async def apply_receipt(self, external_id: str, status: str) -> bool:
        """A delivery receipt; only ever moves forward (out-of-order receipts change nothing)."""
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
        self._announce_status(row)
        return True
