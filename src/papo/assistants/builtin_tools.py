"""papo's own tools, which a tenant turns on per assistant (tool rows of kind `builtin`):

- `hand_over_to_person`: in a WhatsApp conversation (the bot runs as the tenant's service
  principal), the model may decide it cannot help; once the reply is sent, the conversation goes to
  the agents' queue and the bot stops answering. Not offered in a member's chat, where there is no
  person to hand over to.
- `earlier_conversations`: the customer's other conversations (a contact's on WhatsApp, a
  member's own chats), newest first, optionally searched: what the customer asked before, what was
  answered, how the ticket ended."""

from __future__ import annotations

import json
import uuid
from typing import Any

from papo.auth.service import Principal
from papo.chat.service import ChatService
from papo.db.engine import Database
from papo.settings import Settings

HAND_OVER = "hand_over_to_person"
EARLIER_CONVERSATIONS = "earlier_conversations"

SPECS: dict[str, dict[str, Any]] = {
    HAND_OVER: {
        "description": (
            "Hand this conversation over to a human agent. Use it when the customer asks for a person, "
            "or when you cannot help; then tell the customer that a person will continue the conversation."
        ),
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why a person should take over"}},
        },
    },
    EARLIER_CONVERSATIONS: {
        "description": (
            "Look up this customer's earlier conversations (newest first, with their latest messages). "
            "Give a query to find the conversations that mention something."
        ),
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "Words to look for (optional)"}},
        },
    },
}


class BuiltinTools:
    """The built-ins one reply may use, for one conversation."""

    def __init__(self, db: Database, principal: Principal, settings: Settings, session_id: uuid.UUID) -> None:
        self.db = db
        self.principal = principal
        self.settings = settings
        self.session_id = session_id
        self.handed_over = False  # the reply's completion hands the conversation to a person

    def offers(self, name: str) -> bool:
        if name == HAND_OVER:
            return self.principal.is_service
        return name in SPECS

    async def run(self, name: str, arguments: dict[str, Any]) -> tuple[str, str | None]:
        """The result for the model and, when the call failed, why."""
        if name == HAND_OVER:
            self.handed_over = True
            reason = str(arguments.get("reason") or "")[:500]
            note = "A person will take over this conversation after your reply; tell the customer so."
            return json.dumps({"handed_over": True, "reason": reason, "note": note}), None
        query = arguments.get("query") or ""
        if not isinstance(query, str):
            return "", "query must be a string"
        async with self.db.transaction(self.principal.context()) as session:
            found = await ChatService(session, self.principal, self.settings).earlier_conversations(
                self.session_id, query
            )
        return json.dumps({"conversations": found}, ensure_ascii=False, default=str), None
