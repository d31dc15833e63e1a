"""The rules of talking with an assistant: when a message starts a reply, regenerate, edit-and-resend.

Everything here runs in the request's transaction. A started reply is only *scheduled*: the caller
spawns it after the transaction commits (see papo.assistants.replies)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from papo.assistants.service import AssistantService
from papo.assistants.usage import check_quota
from papo.chat.models import MessageRole
from papo.chat.records import StoredMessage
from papo.chat.replies import PendingReply, Posted
from papo.chat.service import ChatService
from papo.crypto import KeyBox
from papo.errors import Conflict
from papo.settings import Settings

BUSY = "the assistant is still writing its reply; stop it or wait, then send again"


class Conversation:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def post(
        self,
        session_id: uuid.UUID,
        role: MessageRole,
        content: str,
        metadata: dict[str, Any] | None,
        branch_of: uuid.UUID | None = None,
    ) -> Posted:
        """Store a message; a user message in a chat with an assistant also starts its reply.
        While a reply is being written, another user message is refused (409), not queued."""
        stored = await self.chat.add_message(session_id, role, content, metadata=metadata, branch_of=branch_of)
        if role != MessageRole.user or stored.assistant_id is None:
            return Posted(stored, None)
        _, pending = await self._start_reply(session_id, stored.assistant_id)
        return Posted(stored, pending)

    async def regenerate(self, session_id: uuid.UUID, user_id: str) -> tuple[StoredMessage, PendingReply]:
        """Write the last reply again (also retries one that failed); the previous one is kept, superseded."""
        session = await self.chat.require_chat_session(session_id, user_id)
        if session.assistant_id is None:
            raise Conflict("this chat has no assistant")
        previous = await self.chat.last_on_line(session_id, MessageRole.assistant)
        last_question = await self.chat.last_on_line(session_id, MessageRole.user)
        if (
            previous is None
            or last_question is None
            or (previous.created_at, previous.id)
            < (
                last_question.created_at,
                last_question.id,
            )
        ):
            raise Conflict("there is no reply to regenerate")
        if previous.reply_state == "streaming":
            raise Conflict(BUSY)
        await self.chat.retire_from(session_id, previous)
        return await self._start_reply(session_id, session.assistant_id, branch_of=previous.id)

    async def edit_and_resend(self, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str, content: str) -> Posted:
        """Replace one of the user's messages with a new version and continue from it; the old version
        and what followed it stay readable as a superseded branch."""
        original = await self.chat.get_message(session_id, message_id, user_id)
        if original.role != MessageRole.user or original.superseded_at is not None:
            raise Conflict("only a current message you wrote can be edited")
        if await self.chat.streaming_reply(session_id) is not None:
            raise Conflict(BUSY)
        await self.chat.retire_from(session_id, original)
        return await self.post(session_id, MessageRole.user, content, original.metadata_, branch_of=original.id)

    async def _start_reply(
        self, session_id: uuid.UUID, assistant_id: uuid.UUID, branch_of: uuid.UUID | None = None
    ) -> tuple[StoredMessage, PendingReply]:
        if await self.chat.streaming_reply(session_id) is not None:
            raise Conflict(BUSY)
        await check_quota(self.chat.db, self.chat.principal)
        placeholder = await self.chat.add_reply_placeholder(session_id, {"assistant_id": str(assistant_id)}, branch_of)
        return placeholder, PendingReply(session_id, placeholder.id, assistant_id)


class AssistantReplies:
    """Assistants' reply policy for chat (papo.chat.replies.ReplyPolicy), put in the running process."""

    def __init__(self, settings: Settings, keys: KeyBox) -> None:
        self.settings = settings
        self.keys = keys

    async def post(
        self,
        chat: ChatService,
        session_id: uuid.UUID,
        role: MessageRole,
        content: str,
        metadata: dict[str, Any] | None,
    ) -> Posted:
        return await Conversation(chat).post(session_id, role, content, metadata)

    async def regenerate(
        self, chat: ChatService, session_id: uuid.UUID, user_id: str
    ) -> tuple[StoredMessage, PendingReply]:
        return await Conversation(chat).regenerate(session_id, user_id)

    async def edit_and_resend(
        self, chat: ChatService, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str, content: str
    ) -> Posted:
        return await Conversation(chat).edit_and_resend(session_id, message_id, user_id, content)

    async def resolve_assistant(
        self, chat: ChatService, choice: uuid.UUID | Literal["default"] | None
    ) -> uuid.UUID | None:
        return await AssistantService(chat.db, chat.principal, self.settings, self.keys).resolve(choice)
