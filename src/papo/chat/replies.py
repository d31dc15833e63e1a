"""Where assistant replies plug into chat: chat's endpoints store messages through a reply policy
and schedule what it starts, without knowing who writes the replies (assistants provides both,
through the running process; see papo.app)."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from papo.auth.service import Principal
from papo.chat.models import MessageRole
from papo.chat.records import StoredMessage
from papo.chat.service import ChatService


@dataclass(frozen=True)
class PendingReply:
    """A reply row created in this transaction, to generate once it has committed."""

    session_id: uuid.UUID
    reply_id: uuid.UUID
    assistant_id: uuid.UUID


@dataclass(frozen=True)
class Posted:
    message: StoredMessage
    reply: PendingReply | None


class ReplyPolicy(Protocol):
    """The rules of talking with an assistant, in the request's transaction."""

    async def post(
        self,
        chat: ChatService,
        session_id: uuid.UUID,
        role: MessageRole,
        content: str,
        metadata: dict[str, Any] | None,
    ) -> Posted:
        """Store a message; one that asks the chat's assistant starts a reply."""

    async def regenerate(
        self, chat: ChatService, session_id: uuid.UUID, user_id: str
    ) -> tuple[StoredMessage, PendingReply]:
        """Write the last reply again."""

    async def edit_and_resend(
        self, chat: ChatService, session_id: uuid.UUID, message_id: uuid.UUID, user_id: str, content: str
    ) -> Posted:
        """Replace one of the user's messages and continue from it."""

    async def resolve_assistant(
        self, chat: ChatService, choice: uuid.UUID | Literal["default"] | None
    ) -> uuid.UUID | None:
        """An assistant of the caller's tenant (404 otherwise), the tenant's default, or none."""


class ReplyRunner(Protocol):
    """Whatever generates replies in this process, once their transaction committed."""

    async def spawn(
        self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, assistant_id: uuid.UUID
    ) -> None: ...

    def text_so_far(self, reply_id: uuid.UUID) -> str | None: ...

    async def halt(self, reply_id: uuid.UUID) -> None: ...


class AnsweredChats:
    """Chats whose user messages this process has recently seen start a reply: their next message
    goes straight to the full request path instead of first asking post_message_at_once, which
    would only find that out again. A hint, never a rule: a chat wrongly in it takes the full
    path, which is right for every chat."""

    def __init__(self, size: int = 10_000, seconds: float = 300.0) -> None:
        self.size = size
        self.seconds = seconds
        self.seen: OrderedDict[uuid.UUID, float] = OrderedDict()  # chat → when, oldest first

    def add(self, chat_id: uuid.UUID) -> None:
        self.seen[chat_id] = time.monotonic()
        self.seen.move_to_end(chat_id)
        while len(self.seen) > self.size:
            self.seen.popitem(last=False)

    def __contains__(self, chat_id: uuid.UUID) -> bool:
        seen_at = self.seen.get(chat_id)
        if seen_at is None:
            return False
        if time.monotonic() - seen_at >= self.seconds:  # its assistant may have been taken off since
            del self.seen[chat_id]
            return False
        return True
