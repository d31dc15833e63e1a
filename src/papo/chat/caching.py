"""Conditional GETs for chat lists and history: ETag / If-None-Match answered with 304.

The validator is cheap to compute without building the answer: every change a member can see in
their chats is written to their realtime stream in the same transaction (the outbox), so the id of
their newest event is a version of everything they can read (once numbered: a write that just
returned may still wait for its position, which the validator then asks for). While a reply is being written its
text grows without events, so nothing that may include it is tagged until it is finished."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.deps import CurrentPrincipal, DbSession, ReadSession
from papo.db.engine import Database, driver
from papo.errors import NotModified
from papo.realtime.service import latest_event_id, stamp_events
from papo.runtime import running

CACHE_CONTROL = "private, no-cache"  # a browser may keep it, but asks every time (cheaply)

_STREAMING_SQL = """
SELECT EXISTS (SELECT 1 FROM messages
                WHERE reply_state = 'streaming' AND tenant_id = $1
                  AND ($2::uuid IS NULL OR session_id = $2))
"""


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = [part.strip() for part in if_none_match.split(",")]
    bare = etag.removeprefix("W/")
    return "*" in candidates or any(c.removeprefix("W/") == bare for c in candidates)


async def conditional(request: Request, response: Response, session: DbSession, principal: CurrentPrincipal) -> None:
    """Tag the answer, or answer 304 at once when the caller already has this version."""
    await _tag(request, response, session, principal)


async def conditional_read(
    request: Request, response: Response, session: ReadSession, principal: CurrentPrincipal
) -> None:
    """The same for answers read from the read replica: the version is read there too, so a tag
    never names a state newer than the answer it comes with."""
    await _tag(request, response, session, principal)


async def _tag(request: Request, response: Response, session: AsyncSession, principal: CurrentPrincipal) -> None:
    if principal.user_id is None:
        return
    raw_scope = request.path_params.get("session_id") or request.query_params.get("sessionId")
    try:
        scope = uuid.UUID(raw_scope) if raw_scope else None
    except ValueError:  # the endpoint's own validation answers it
        return
    if await driver(session).fetchval(_STREAMING_SQL, principal.tenant_id, scope):
        response.headers["Cache-Control"] = "no-store"
        return
    version = await latest_event_id(session, principal.tenant_id, principal.user_id)
    if version is None:  # a change of theirs just committed and is not numbered yet: number it
        db: Database = running(request).db
        await stamp_events(db)
        version = await latest_event_id(session, principal.tenant_id, principal.user_id)
    if version is None:
        response.headers["Cache-Control"] = "no-store"
        return
    query = urlencode(sorted(request.query_params.multi_items()))
    digest = hashlib.sha256(f"{principal.user_id}\x00{request.url.path}\x00{query}".encode()).hexdigest()[:16]
    etag = f'W/"{version}-{digest}"'
    if _matches(request.headers.get("if-none-match", ""), etag):
        raise NotModified({"ETag": etag, "Cache-Control": CACHE_CONTROL})
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = CACHE_CONTROL


# Route options for a GET that answers conditionally (from the primary, or from the read replica).
NOT_MODIFIED = {304: {"description": "Not modified: the If-None-Match copy is current"}}
CONDITIONAL: dict[str, Any] = {"dependencies": [Depends(conditional)], "responses": NOT_MODIFIED}
CONDITIONAL_READ: dict[str, Any] = {"dependencies": [Depends(conditional_read)], "responses": NOT_MODIFIED}
