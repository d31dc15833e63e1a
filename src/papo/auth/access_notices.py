"""Changes that withdraw access, as announced at commit on ACCESS_CHANNEL (migration 0022): a
membership's role changed or removed, a user deleted, a browser session ended, an API key revoked.
A notice carries ids only; whoever holds a principal (an open stream, a remembered credential)
drops or re-checks what the notice concerns."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from papo.auth.service import Principal


ACCESS_CHANNEL = "papo_access"


@dataclass(frozen=True)
class Grant:
    """What an open stream holds: its principal, and the browser session it came from (cookie
    streams and sockets opened by the web app), which signing out ends."""

    tenant_id: uuid.UUID
    user_id: str | None
    role: str
    api_key_id: uuid.UUID | None
    web_session_id: uuid.UUID | None

    @classmethod
    def of(cls, principal: Principal, web_session_id: uuid.UUID | None) -> Grant:
        return cls(principal.tenant_id, principal.user_id, principal.role, principal.api_key_id, web_session_id)


@dataclass(frozen=True)
class Notice:
    """One announced change (see migration 0022): which principals it may concern."""

    kind: str
    tenant_id: uuid.UUID | None = None
    user_id: str | None = None
    web_session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        try:
            raw = json.loads(payload)
            return cls(
                kind=str(raw["kind"]),
                tenant_id=_uuid(raw.get("tenant_id")),
                user_id=None if raw.get("user_id") is None else str(raw["user_id"]),
                web_session_id=_uuid(raw.get("web_session_id")),
                api_key_id=_uuid(raw.get("api_key_id")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def concerns(self, grant: Grant) -> bool:
        if self.kind == "api_key":
            return grant.api_key_id is not None and grant.api_key_id == self.api_key_id
        if self.kind == "web_session":
            # One browser signed out: only the streams of that browser session.
            return grant.web_session_id is not None and grant.web_session_id == self.web_session_id
        if self.kind == "membership":
            return grant.user_id == self.user_id and grant.tenant_id == self.tenant_id
        if self.kind == "user":
            return grant.user_id is not None and grant.user_id == self.user_id
        return True  # a kind this process does not know yet: re-check rather than miss it


def _uuid(value: object) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(str(value))
