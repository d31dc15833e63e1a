"""The life of an assistant's reply as chat's rows: a placeholder that streams, saves of the text
so far, stop, finish, and the retiring of superseded branches for regenerate and edit-and-resend
(driven by papo.assistants.replies). ChatService includes these methods; they are apart because
they are a job of their own."""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.chat.models import ChatSession, Message, MessageRole
from papo.chat.records import StoredMessage, message_payload
from papo.db.base import new_id
from papo.db.engine import driver
from papo.errors import Conflict


class ChatRows(Protocol):
    """What the reply lifecycle uses of the service it is part of."""

    db: AsyncSession
    principal: Principal

    def _emit(self, event_type: str, data: dict[str, Any], user_id: str | None = None) -> None: ...

    async def get_message(self, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str) -> Message: ...

    async def require_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession: ...


class ReplyLifecycle:
    async def streaming_reply(self: ChatRows, session_id: uuid.UUID) -> uuid.UUID | None:
        """The reply being written in this chat, if any (asked before every reply starts)."""
        reply: uuid.UUID | None = await driver(self.db).fetchval(
            "SELECT id FROM messages WHERE tenant_id = $1 AND session_id = $2 AND reply_state = 'streaming' LIMIT 1",
            self.principal.tenant_id,
            session_id,
        )
        return reply

    async def add_reply_placeholder(
        self: ChatRows, session_id: uuid.UUID, metadata: dict[str, Any], branch_of: uuid.UUID | None = None
    ) -> StoredMessage:
        """The assistant's message, empty and `streaming`, so a reload shows the reply as it grows."""
        row = await driver(self.db).fetchrow(
            """
            INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata, reply_state, branch_of)
            VALUES ($1, $2, $3, 'assistant', '', 'sent', $4, 'streaming', $5)
            RETURNING id, session_id, role, content, status, metadata, reply_state, branch_of, created_at, updated_at
            """,
            self.principal.tenant_id,
            new_id(),
            session_id,
            json.dumps(metadata),
            branch_of,
        )
        message = StoredMessage(**dict(row))
        self._emit("message.created", message_payload(message, streaming=True))
        return message

    async def save_replies_progress(self: ChatRows, progress: dict[uuid.UUID, str]) -> set[uuid.UUID]:
        """Store what each reply has written so far (readers who arrive later start from it), in one
        statement; the replies still streaming (the others were stopped). The text itself reaches
        open pages as live `reply.delta` events, not through here."""
        rows = await driver(self.db).fetch(
            "UPDATE messages m SET content = p.content FROM unnest($2::uuid[], $3::text[]) AS p (id, content) "
            "WHERE m.tenant_id = $1 AND m.id = p.id AND m.reply_state = 'streaming' RETURNING m.id",
            self.principal.tenant_id,
            list(progress),
            list(progress.values()),
        )
        return {row["id"] for row in rows}

    async def keep_stopped_text(self: ChatRows, message: uuid.UUID, content: str) -> None:
        """A stopped reply keeps everything its reader was shown, including the text generated after
        the last save and before the generator noticed the stop."""
        row = await driver(self.db).fetchrow(
            """
            UPDATE messages SET content = $3
             WHERE tenant_id = $1 AND id = $2 AND reply_state = 'stopped' AND length(content) < length($3)
            RETURNING id, session_id, role, content, status, metadata, reply_state, created_at, updated_at
            """,
            self.principal.tenant_id,
            message,
            content,
        )
        if row is not None:
            self._emit("message.updated", message_payload(StoredMessage(**dict(row))))

    async def announce_update(self: ChatRows, message_id: uuid.UUID) -> None:
        """Publish a message's current state (after a change made outside this service's calls)."""
        message = await self.db.scalar(
            select(Message).where(Message.tenant_id == self.principal.tenant_id, Message.id == message_id)
        )
        if message is not None:
            self._emit("message.updated", message_payload(message))

    async def touch_reply(self: ChatRows, message: uuid.UUID) -> bool:
        """Show the reply is still alive (updated_at moves), so no sweep takes it for abandoned."""
        alive = await driver(self.db).fetchval(
            "UPDATE messages SET reply_state = reply_state WHERE tenant_id = $1 AND id = $2 "
            "AND reply_state = 'streaming' RETURNING true",
            self.principal.tenant_id,
            message,
        )
        return bool(alive)

    async def finish_reply(
        self: ChatRows,
        message: uuid.UUID,
        content: str,
        *,
        failed: bool,
        metadata: dict[str, Any],
        state: str | None = None,
    ) -> bool:
        """Close a streaming reply: delivered and complete, or error and failed. False if it was stopped."""
        reply_state = state or ("failed" if failed else "complete")
        row = await driver(self.db).fetchrow(
            """
            UPDATE messages SET content = $3, status = $4, reply_state = $5, metadata = metadata || $6::jsonb
             WHERE tenant_id = $1 AND id = $2 AND reply_state = 'streaming'
            RETURNING id, session_id, role, content, status, metadata, reply_state, created_at, updated_at
            """,
            self.principal.tenant_id,
            message,
            content,
            "error" if failed else "delivered",
            reply_state,
            json.dumps(metadata),
        )
        if row is None:
            return False
        self._emit("message.updated", message_payload(StoredMessage(**dict(row))))
        return True

    async def stop_reply(
        self: ChatRows, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str, live_text: str | None = None
    ) -> Message:
        """Stop a reply mid-stream: it keeps what was written (`live_text`, when this process is
        generating it and knows more than the last save), marked stopped."""
        await self.require_chat_session(session_id, user_id)
        row = await driver(self.db).fetchrow(
            """
            UPDATE messages SET status = 'delivered', reply_state = 'stopped',
                   content = CASE WHEN length(coalesce($4, '')) > length(content) THEN $4 ELSE content END,
                   metadata = metadata || '{"stopped": true}'::jsonb
             WHERE tenant_id = $1 AND session_id = $2 AND id = $3 AND reply_state = 'streaming'
            RETURNING id
            """,
            self.principal.tenant_id,
            session_id,
            message_id,
            live_text,
        )
        message = await self.get_message(session_id, message_id, user_id)
        if row is None and message.reply_state != "stopped":
            raise Conflict("this message is not a reply being written")
        if row is not None:
            self._emit("message.updated", message_payload(message))
        return message

    async def retire_from(self: ChatRows, session_id: uuid.UUID, message: Message) -> int:
        """Retire `message` and everything after it on the current line (kept, no longer current)."""
        retired = await driver(self.db).fetch(
            """
            UPDATE messages SET superseded_at = now()
             WHERE tenant_id = $1 AND session_id = $2 AND superseded_at IS NULL AND (created_at, id) >= ($3, $4)
            RETURNING id
            """,
            self.principal.tenant_id,
            session_id,
            message.created_at,
            message.id,
        )
        for row in retired:
            self._emit("message.superseded", {"id": str(row["id"]), "session_id": str(session_id)})
        return len(retired)

    async def last_on_line(self: ChatRows, session_id: uuid.UUID, role: MessageRole) -> Message | None:
        return await self.db.scalar(
            select(Message)
            .where(
                Message.tenant_id == self.principal.tenant_id,
                Message.session_id == session_id,
                Message.superseded_at.is_(None),
                Message.role == role.value,
            )
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(1)
        )

    async def earlier_conversations(
        self: ChatRows, session_id: uuid.UUID, query: str, *, limit: int = 5, messages_each: int = 6
    ) -> list[dict[str, Any]]:
        """The same customer's other conversations, newest first, each with its latest messages (or,
        given a query, the messages that match it): a WhatsApp contact's conversations on that
        number's tenant, or a member's own chats. Row-level security still decides what is read."""
        rows = await driver(self.db).fetch(
            """
            WITH this AS (
              SELECT user_id, contact_id FROM chat_sessions WHERE tenant_id = $1 AND id = $2
            ), q AS (
              SELECT CASE WHEN $3 = '' THEN NULL ELSE websearch_to_tsquery('simple', papo_fold($3)) END AS query
            )
            SELECT s.id, s.title, s.channel::text AS channel, s.created_at, s.last_message_at, s.ticket_status,
                   said.messages
              FROM this, q, chat_sessions s
              CROSS JOIN LATERAL (
                SELECT json_agg(json_build_object('role', m.role, 'at', m.created_at, 'text', left(m.content, 400))
                                ORDER BY m.created_at) AS messages
                  FROM (SELECT role, created_at, content FROM messages
                         WHERE tenant_id = s.tenant_id AND session_id = s.id AND superseded_at IS NULL
                           AND role IN ('user', 'assistant') AND content <> ''
                           AND (q.query IS NULL OR search_vector @@ q.query)
                         ORDER BY created_at DESC LIMIT $5) m
              ) said
             WHERE s.tenant_id = $1 AND s.id <> $2 AND s.status <> 'deleted' AND said.messages IS NOT NULL
               AND CASE WHEN this.contact_id IS NOT NULL THEN s.contact_id = this.contact_id
                        ELSE s.user_id = this.user_id AND s.contact_id IS NULL END
             ORDER BY s.activity_at DESC LIMIT $4
            """,
            self.principal.tenant_id,
            session_id,
            query.strip()[:200],
            limit,
            messages_each,
        )
        return [
            {
                "conversation_id": str(row["id"]),
                "title": row["title"],
                "channel": row["channel"],
                "started_at": row["created_at"],
                "last_message_at": row["last_message_at"],
                "ticket_status": row["ticket_status"],
                "messages": row["messages"],
            }
            for row in rows
        ]

    async def history_for_model(
        self: ChatRows, session_id: uuid.UUID, token_budget: int, estimate: Any
    ) -> list[dict[str, Any]]:
        """The newest messages that fit the budget, oldest first; replies still being written or that
        failed are left out, and so are earlier tool calls (the replies they fed say what they found).
        A message without text says what its voice notes' transcripts say; a user's message with
        stored images or documents lists them under `files` (the caller turns them into what the
        model takes, and removes the key)."""
        rows = await driver(self.db).fetch(
            """
            SELECT role, coalesce(content, '') AS content, files FROM (
              SELECT m.role, m.created_at, m.id, coalesce(nullif(m.content, ''), (
                       SELECT string_agg(a.transcript, ' ' ORDER BY a.created_at) FROM attachments a
                        WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id AND a.transcript IS NOT NULL
                     )) AS content,
                     (SELECT json_agg(json_build_object('kind', a.kind, 'mime_type', a.mime_type,
                                      'file_name', a.file_name, 'blob_key', a.blob_key, 'size', a.size)
                                      ORDER BY a.created_at)
                        FROM attachments a
                       WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id AND a.state = 'stored'
                         AND a.kind IN ('image', 'document') AND m.role = 'user') AS files
                FROM messages m
               WHERE m.tenant_id = $1 AND m.session_id = $2 AND m.superseded_at IS NULL
                 AND m.role NOT IN ('tool', 'note')
                 AND (m.reply_state IS NULL OR m.reply_state IN ('complete', 'stopped'))
            ) said
             WHERE content <> '' OR files IS NOT NULL
             ORDER BY created_at DESC, id DESC LIMIT 500
            """,
            self.principal.tenant_id,
            session_id,
        )
        picked: list[dict[str, Any]] = []
        spent = 0
        for row in rows:
            cost = estimate(row["content"])
            if picked and spent + cost > token_budget:
                break
            said: dict[str, Any] = {"role": row["role"], "content": row["content"]}
            if row["files"]:
                said["files"] = row["files"]
            picked.append(said)
            spent += cost
        picked.reverse()
        return picked
