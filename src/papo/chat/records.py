"""A message as chat stores and announces it: the row an insert returns, and `message.created`'s one
payload shape (papo.chat.service, papo.chat.channel and the reply lifecycle all build events from it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from papo.chat.schemas import MessageOut


@dataclass(frozen=True)
class StoredMessage:
    """A message as the insert returned it (the columns MessageOut shows)."""

    id: uuid.UUID
    session_id: uuid.UUID
    role: str
    content: str
    status: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    reply_state: str | None = None
    branch_of: uuid.UUID | None = None
    # The session's assistant, when the insert reports it (it answers user messages).
    assistant_id: uuid.UUID | None = None


def message_payload(message: Any, **channel_fields: Any) -> dict[str, Any]:
    """`message.created`'s one shape, whatever the channel: the API's message, plus what a channel
    adds (channel, external_id, delivery_status) or a reply's `streaming` flag."""
    return MessageOut.model_validate(message).model_dump(mode="json") | channel_fields
