"""Chat sessions and messages: the seed-000 `Database` methods, plus paging, merging and limits.

Every query names the acting user explicitly *and* runs under row-level security: the explicit
filter gives the right answer for admins (whom RLS lets read their tenant's session rows for
support), and RLS keeps the answer inside the tenant even if a filter here were wrong.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg
from sqlalchemy import Text, and_, cast, delete, func, literal, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from papo.auth import service as auth_service
from papo.auth.invitations import pending_invitee
from papo.auth.service import Principal
from papo.chat.models import Channel, ChatSession, Message, MessageRole, MessageStatus, SessionStatus
from papo.chat.records import StoredMessage, message_payload
from papo.chat.reply_lifecycle import ReplyLifecycle
from papo.chat.schemas import SessionOut
from papo.db.base import new_id
from papo.db.engine import apply_context, driver
from papo.db.errors import not_found_on_refusal
from papo.errors import UNSTORABLE_TEXT, Forbidden, InvalidInput, NotFound
from papo.pagination import decode_cursor, encode_cursor
from papo.realtime.service import emit
from papo.settings import Settings

SESSION_NOT_FOUND = "chat session not found"
MESSAGE_NOT_FOUND = "message not found"
MAX_PAGE = 200
PREVIEW_CHARS = 140
# The hottest statement goes straight to asyncpg (see papo.db.engine.driver and bench/).
INSERT_MESSAGE = """
    INSERT INTO messages (tenant_id, id, session_id, role, content, status, metadata, branch_of)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id, session_id, role, content, status, metadata, reply_state, branch_of, created_at, updated_at,
              (SELECT s.assistant_id FROM chat_sessions s
                WHERE s.tenant_id = messages.tenant_id AND s.id = messages.session_id) AS assistant_id
"""


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    has_more: bool


# Chat lists: the indexes hold the minute of activity (migration 0045), the exact time orders within it.
MOST_RECENT_FIRST = (ChatSession.activity_minute.desc(), ChatSession.activity_at.desc(), ChatSession.id.desc())


def _before(cursor: str) -> ColumnElement[bool]:
    """The chats listed after the one a keyset cursor names (its activity and id), in list order."""
    activity_at, session_id = decode_cursor(cursor, datetime, uuid.UUID)
    return tuple_(ChatSession.activity_minute, ChatSession.activity_at, ChatSession.id) < tuple_(
        func.papo_activity_minute(literal(activity_at)), literal(activity_at), literal(session_id)
    )


def checked_metadata(settings: Settings, metadata: dict[str, Any] | None, field: str = "metadata") -> dict[str, Any]:
    metadata = metadata or {}
    if _json_size(metadata, field) > settings.max_metadata_bytes:
        raise InvalidInput(f"metadata exceeds {settings.max_metadata_bytes} bytes", field=field)
    return metadata


def checked_content(settings: Settings, content: str) -> str:
    if not content.strip():
        raise InvalidInput("message content is empty", field="content")
    if "\x00" in content:
        raise InvalidInput("message content contains a NUL character", field="content")
    if _utf8_size(content, "content") > settings.max_message_bytes:
        raise InvalidInput(f"message exceeds {settings.max_message_bytes} bytes", field="content")
    return content


def _utf8_size(text: str, field: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:  # an unpaired surrogate, which a JSON body may carry as an escape
        raise InvalidInput(UNSTORABLE_TEXT, field=field) from None


class ChatService(ReplyLifecycle):
    """Bound to one transaction and one principal; methods mirror seed 000's `Database` class."""

    def __init__(self, db: AsyncSession, principal: Principal, settings: Settings) -> None:
        self.db = db
        self.principal = principal
        self.settings = settings

    # ---- validation -------------------------------------------------------------------------

    def _clean_title(self, title: str | None) -> str | None:
        if title is None:
            return None
        title = " ".join(title.split())
        if len(title) > self.settings.max_title_chars:
            raise InvalidInput(f"title is longer than {self.settings.max_title_chars} characters", field="title")
        return title or None

    def _merged_metadata(self, column: Any, patch: dict[str, Any]) -> ColumnElement[Any]:
        """JSON merge patch at the top level: keys with null are removed, the rest replace."""
        assignments = {k: v for k, v in patch.items() if v is not None}
        removals = [k for k, v in patch.items() if v is None]
        merged: ColumnElement[Any] = column.op("||")(cast(assignments, JSONB))
        if removals:
            merged = merged.op("-")(cast(removals, ARRAY(Text)))
        return merged

    def _raise_if_metadata_too_large(self, size: int | None) -> None:
        if size is not None and size > self.settings.max_metadata_bytes:
            raise InvalidInput(f"metadata would exceed {self.settings.max_metadata_bytes} bytes", field="metadata")

    # ---- events -----------------------------------------------------------------------------

    def _emit(self, event_type: str, data: dict[str, Any], user_id: str | None = None) -> None:
        """Into the owner's realtime stream, in this transaction (see papo.realtime.service)."""
        emit(self.db, event_type, data, tenant_id=self.principal.tenant_id, user_id=user_id or self.principal.user_id)

    def _emit_session(self, event_type: str, chat: ChatSession) -> None:
        self._emit(event_type, SessionOut.model_validate(chat).model_dump(mode="json"), chat.user_id)

    # ---- sessions ---------------------------------------------------------------------------

    async def create_chat_session(
        self,
        user_id: str,
        title: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        channel: Channel = Channel.api,
        assistant_id: uuid.UUID | None = None,
    ) -> ChatSession:
        chat = ChatSession(
            assistant_id=assistant_id,
            tenant_id=self.principal.tenant_id,
            user_id=user_id,
            title=self._clean_title(title),
            status=SessionStatus.active,
            channel=channel,
            metadata_=checked_metadata(self.settings, metadata),
        )
        self.db.add(chat)
        with not_found_on_refusal("no such member in this tenant"):
            await self.db.flush()
        await self.db.refresh(chat)
        self._emit_session("session.created", chat)
        return chat

    def _owned(self, user_id: str) -> ColumnElement[bool]:
        return and_(
            ChatSession.tenant_id == self.principal.tenant_id,
            ChatSession.user_id == user_id,
            ChatSession.status != SessionStatus.deleted,
        )

    async def get_chat_sessions(
        self,
        user_id: str,
        status: SessionStatus = SessionStatus.active,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[ChatSession], str | None]:
        """A page of the user's sessions in one status, most recent activity first."""
        query = select(ChatSession).where(self._owned(user_id), ChatSession.status == status)
        if cursor is not None:
            query = query.where(_before(cursor))
        query = query.order_by(*MOST_RECENT_FIRST)
        if limit is None:
            return list((await self.db.scalars(query)).all()), None
        rows = list((await self.db.scalars(query.limit(limit + 1))).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].activity_at, rows[-1].id)
        return rows, next_cursor

    async def previews(self, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The start of each session's newest current message (for chat lists), one query per page."""
        rows = await driver(self.db).fetch(
            """
            SELECT s.id, left(m.content, $3) AS preview
              FROM unnest($2::uuid[]) AS s(id)
              CROSS JOIN LATERAL (
                SELECT content FROM messages
                 WHERE tenant_id = $1 AND session_id = s.id AND superseded_at IS NULL AND content <> ''
                   AND role <> 'tool'
                 ORDER BY created_at DESC, id DESC LIMIT 1) AS m
            """,
            self.principal.tenant_id,
            session_ids,
            PREVIEW_CHARS,
        )
        return {row["id"]: " ".join(row["preview"].split()) for row in rows}

    async def list_tenant_sessions(
        self,
        *,
        user_id: str | None,
        status: SessionStatus | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[ChatSession], str | None]:
        """Support view for tenant admins: every session's metadata (RLS lets admins read session
        rows of their tenant, never the messages); the API shows no titles or metadata."""
        self.principal.require_admin()
        query = select(ChatSession).where(ChatSession.tenant_id == self.principal.tenant_id)
        if user_id is not None:
            query = query.where(ChatSession.user_id == user_id)
        if status is not None:
            query = query.where(ChatSession.status == status)
        if cursor is not None:
            query = query.where(_before(cursor))
        query = query.order_by(*MOST_RECENT_FIRST).limit(limit + 1)
        rows = list((await self.db.scalars(query)).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].activity_at, rows[-1].id)
        return rows, next_cursor

    async def get_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession | None:
        return await self.db.scalar(select(ChatSession).where(self._owned(user_id), ChatSession.id == session_id))

    async def require_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession:
        chat = await self.get_chat_session(session_id, user_id)
        if chat is None:
            raise NotFound(SESSION_NOT_FOUND)
        return chat

    async def update_chat_session(
        self,
        session_id: uuid.UUID,
        user_id: str,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        status: SessionStatus | None = None,
        fields: set[str] | None = None,
        assistant_id: uuid.UUID | None = None,
    ) -> ChatSession:
        """Apply the given changes; `fields` names which were sent (so an explicit null title clears it)."""
        sent = fields if fields is not None else {"title", "metadata", "status"}
        values: dict[str, Any] = {}
        if "assistant_id" in sent:
            values["assistant_id"] = assistant_id
        if "title" in sent:
            values["title"] = self._clean_title(title)
        if "metadata" in sent and metadata is not None:
            checked_metadata(self.settings, metadata)
            values["metadata_"] = self._merged_metadata(ChatSession.metadata_, metadata)
        if "status" in sent and status is not None:
            if status == SessionStatus.deleted:
                raise InvalidInput("delete a session with DELETE", field="status")
            values["status"] = status
        if not values:
            return await self.require_chat_session(session_id, user_id)
        statement = (
            update(ChatSession)
            .where(self._owned(user_id), ChatSession.id == session_id)
            .values(**values)
            .returning(ChatSession, func.octet_length(cast(ChatSession.metadata_, Text)))
            .execution_options(synchronize_session=False)
        )
        row = (await self.db.execute(statement)).first()
        if row is None:
            raise NotFound(SESSION_NOT_FOUND)
        self._raise_if_metadata_too_large(row[1])
        chat: ChatSession = row[0]
        await self.db.refresh(chat)
        event_type = "session.updated"
        if "status" in values:
            event_type = "session.archived" if status == SessionStatus.archived else "session.unarchived"
        self._emit_session(event_type, chat)
        return chat

    async def set_title_if_unset(self, session_id: uuid.UUID, user_id: str, title: str) -> bool:
        """Name an untitled chat (auto-title); a title the user chose meanwhile is left alone."""
        chat = await self.db.scalar(
            update(ChatSession)
            .where(self._owned(user_id), ChatSession.id == session_id, ChatSession.title.is_(None))
            .values(title=self._clean_title(title[: self.settings.max_title_chars]))
            .returning(ChatSession)
            .execution_options(synchronize_session=False)
        )
        if chat is None:
            return False
        await self.db.refresh(chat)
        self._emit_session("session.updated", chat)
        return True

    async def archive_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession:
        return await self.update_chat_session(session_id, user_id, status=SessionStatus.archived, fields={"status"})

    async def unarchive_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession:
        return await self.update_chat_session(session_id, user_id, status=SessionStatus.active, fields={"status"})

    async def delete_chat_session(self, session_id: uuid.UUID, user_id: str, *, purge: bool = False) -> None:
        """Soft delete (status `deleted`, hidden everywhere); `purge` removes it and its messages for good."""
        owner = and_(
            ChatSession.tenant_id == self.principal.tenant_id,
            ChatSession.user_id == user_id,
            ChatSession.id == session_id,
        )
        if purge:
            statement: Any = delete(ChatSession).where(owner).returning(ChatSession.id)
        else:
            statement = (
                update(ChatSession)
                .where(owner, ChatSession.status != SessionStatus.deleted)
                .values(status=SessionStatus.deleted, deleted_at=func.now())
                .returning(ChatSession.id)
            )
        deleted = await self.db.scalar(statement.execution_options(synchronize_session=False))
        if deleted is None:
            raise NotFound(SESSION_NOT_FOUND)
        self._emit("session.deleted", {"id": str(session_id), "purged": purge}, user_id)

    async def restore_chat_session(self, session_id: uuid.UUID, user_id: str) -> ChatSession:
        """Undo a soft delete (until the retention purge removes it for good)."""
        restored = await self.db.scalar(
            update(ChatSession)
            .where(
                ChatSession.tenant_id == self.principal.tenant_id,
                ChatSession.user_id == user_id,
                ChatSession.id == session_id,
                ChatSession.status == SessionStatus.deleted,
            )
            .values(status=SessionStatus.active, deleted_at=None)
            .returning(ChatSession)
            .execution_options(synchronize_session=False)
        )
        if restored is None:
            raise NotFound(SESSION_NOT_FOUND)
        self._emit_session("session.restored", restored)
        return restored

    async def open_chat_for_member(
        self,
        *,
        user_id: str | None,
        email: str | None,
        title: str | None,
        metadata: dict[str, Any] | None,
        invite: Callable[[str], Awaitable[str]] | None = None,
        assistant_id: uuid.UUID | None = None,
    ) -> ChatSession:
        """Seed 003's back-office call: a tenant API key (or admin) opens a chat for a member.

        An address with a pending invitation gets the invitation's account shell, which owns the
        chat until the invitee accepts; an unknown one is invited when `invite` is given. Neither
        ever joins an account that merely has the same address. The transaction's context then
        acts as that member, so the row passes the same owner policy as a chat the member opened;
        the tenant never changes."""
        if not (self.principal.is_service or self.principal.is_admin):
            raise Forbidden("opening chats for other members needs a tenant API key or an admin")
        if user_id is not None:
            member_id = (await auth_service.find_member(self.db, user_id)).user_id
        else:
            assert email is not None
            try:
                member_id = await auth_service.find_member_by_email(self.db, email)
            except NotFound:
                if invitee := await pending_invitee(self.db, email):
                    member_id = invitee
                elif invite is not None:
                    member_id = await invite(email)
                else:
                    raise
        self.principal = self.principal.acting_as(member_id)
        await apply_context(self.db, self.principal.context())
        return await self.create_chat_session(
            member_id, title, metadata=metadata, channel=Channel.web, assistant_id=assistant_id
        )

    # ---- messages ---------------------------------------------------------------------------

    async def add_message(
        self,
        session_id: uuid.UUID,
        role: MessageRole,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        status: MessageStatus = MessageStatus.sent,
        branch_of: uuid.UUID | None = None,
    ) -> StoredMessage:
        """One INSERT: the trigger checks the session is writable, stamps created_at and bumps
        the session's last_message_at."""
        content = checked_content(self.settings, content)
        metadata_json = json.dumps(checked_metadata(self.settings, metadata), separators=(",", ":"))
        try:
            row = await driver(self.db).fetchrow(
                INSERT_MESSAGE,
                self.principal.tenant_id,
                new_id(),
                session_id,
                role.value,
                content,
                status.value,
                metadata_json,
                branch_of,
            )
        except (asyncpg.NoDataFoundError, asyncpg.InsufficientPrivilegeError) as exc:
            raise NotFound(SESSION_NOT_FOUND) from exc
        message = StoredMessage(**dict(row))
        self._emit("message.created", message_payload(message))
        return message

    async def get_messages(
        self,
        session_id: uuid.UUID,
        user_id: str,
        *,
        after: str | None = None,
        before: str | None = None,
        latest: bool = False,
        limit: int | None = 50,
        include_superseded: bool = False,
    ) -> Page[Message]:
        """A page of a session's history in (created_at, id) order; `limit=None` is the whole history.
        Messages replaced by a regenerate or an edit are left out unless `include_superseded`."""
        await self.require_chat_session(session_id, user_id)
        query = select(Message).where(Message.tenant_id == self.principal.tenant_id, Message.session_id == session_id)
        if not include_superseded:
            query = query.where(Message.superseded_at.is_(None))
        key = tuple_(Message.created_at, Message.id)
        backwards = before is not None or (latest and after is None)
        if after is not None:
            created_at, message_id = decode_cursor(after, datetime, uuid.UUID)
            query = query.where(key > tuple_(literal(created_at), literal(message_id)))
        if before is not None:
            created_at, message_id = decode_cursor(before, datetime, uuid.UUID)
            query = query.where(key < tuple_(literal(created_at), literal(message_id)))
        if backwards:
            query = query.order_by(Message.created_at.desc(), Message.id.desc())
        else:
            query = query.order_by(Message.created_at, Message.id)
        if limit is not None:
            query = query.limit(limit + 1)
        rows = list((await self.db.scalars(query)).all())
        has_more = limit is not None and len(rows) > limit
        if has_more:
            rows = rows[:limit]
        if backwards:
            rows.reverse()
        return Page(rows, has_more)

    async def get_message(self, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str) -> Message:
        await self.require_chat_session(session_id, user_id)
        message = await self.db.scalar(
            select(Message).where(
                Message.tenant_id == self.principal.tenant_id,
                Message.session_id == session_id,
                Message.id == message_id,
            )
        )
        if message is None:
            raise NotFound(MESSAGE_NOT_FOUND)
        return message

    async def update_message(
        self,
        session_id: uuid.UUID,
        message_id: uuid.UUID,
        user_id: str,
        *,
        status: MessageStatus | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        await self.require_chat_session(session_id, user_id)
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
        if metadata is not None:
            checked_metadata(self.settings, metadata)
            values["metadata_"] = self._merged_metadata(Message.metadata_, metadata)
        if not values:
            return await self.get_message(session_id, message_id, user_id)
        statement = (
            update(Message)
            .where(
                Message.tenant_id == self.principal.tenant_id,
                Message.session_id == session_id,
                Message.id == message_id,
            )
            .values(**values)
            .returning(Message, func.octet_length(cast(Message.metadata_, Text)))
            .execution_options(synchronize_session=False)
        )
        row = (await self.db.execute(statement)).first()
        if row is None:
            raise NotFound(MESSAGE_NOT_FOUND)
        self._raise_if_metadata_too_large(row[1])
        message: Message = row[0]
        await self.db.refresh(message)
        payload = message_payload(message)
        self._emit("message.status_changed" if status is not None else "message.updated", payload)
        return message

    async def update_message_status(self, message_id: uuid.UUID, status: MessageStatus) -> None:
        """Seed 000's updateMessageStatus: by message id alone (RLS limits it to the caller's messages)."""
        updated = await self.db.scalar(
            update(Message)
            .where(Message.tenant_id == self.principal.tenant_id, Message.id == message_id)
            .values(status=status)
            .returning(Message.session_id)
            .execution_options(synchronize_session=False)
        )
        if updated is None:
            raise NotFound(MESSAGE_NOT_FOUND)
        self._emit(
            "message.status_changed", {"id": str(message_id), "session_id": str(updated), "status": status.value}
        )


async def purge_deleted_sessions(db: AsyncSession, older_than_days: int) -> int:
    """Remove, across tenants, sessions soft-deleted more than `older_than_days` ago (with messages)."""
    purged = await db.scalar(
        text("SELECT papo_purge_deleted_sessions(make_interval(days => :days))"), {"days": older_than_days}
    )
    return int(purged or 0)


def _json_size(value: Any, field: str) -> int:
    return _utf8_size(json.dumps(value, separators=(",", ":"), ensure_ascii=False), field)


def message_cursor(message: Message | StoredMessage) -> str:
    return encode_cursor(message.created_at, message.id)
