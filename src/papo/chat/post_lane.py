"""The API's busiest write outside FastAPI's request machinery.

POST /api/v1/sessions/{id}/messages from a caller this process remembers (a bearer credential in
papo.auth.principal_cache), into a chat without an assistant, needs neither a unit of work nor
dependency solving: papo.chat.posts_at_once writes it. FastAPI's routing, dependency solving and
response-model check still cost about as much CPU as everything else such a POST does together
(`make bench-core`: 0.5 ms of ~1.1). This route, tried before every other, answers that case
itself and hands every other case, unchanged and with its body, to the API's own route
(papo.chat.api.send_message).

What stays the same on both paths: the request id, access log, metrics and body limit (the
application's middleware, around every route), the body's validation (MessageCreate; a body it
refuses goes to the full path, which answers the same 422), the rate limit, then require_user,
then the write, the error shapes (the application's exception handlers), and the 201's body.
Cookies never take this path (they need the CSRF check of the full one)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Message, Receive, Scope, Send

from papo.auth.deps import presented_credential
from papo.auth.principal_cache import PrincipalCache
from papo.chat.posts_at_once import PostsAtOnce
from papo.chat.replies import AnsweredChats
from papo.chat.schemas import MessageCreate, MessageOut
from papo.db.engine import ResumptionRefused
from papo.ops.ratelimit import RateLimiter
from papo.runtime import running

# request.state key: the lane spent the message's rate-limit unit before handing the POST over
LIMIT_SPENT = "message_limit_spent"


class PostLaneRuntime(Protocol):
    limiter: RateLimiter
    principals: PrincipalCache
    answered_chats: AnsweredChats
    posts: PostsAtOnce


class MessagePostLane(BaseRoute):
    def __init__(self, full: APIRoute) -> None:
        self.full = full  # the API's route for the same POST: every case this one does not answer

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = self.full.matches(scope)
        # PARTIAL (the path, another method) is left to the routes that serve that method
        return (Match.FULL, child) if match is Match.FULL else (Match.NONE, {})

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)  # it has no name: url_for finds the API's route

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        await wrap_app_handling_exceptions(self._answer, request)(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        state: PostLaneRuntime = running(request)
        credential = presented_credential(request)
        remembered = state.principals.recall(credential) if credential and credential.kind == "bearer" else None
        session_id = _uuid(scope["path_params"].get("session_id"))
        if remembered is None or credential is None or session_id is None or session_id in state.answered_chats:
            await self.full.handle(scope, receive, send)
            return
        body = await request.body()
        replay = _replaying(body, receive)
        asked = _message_create(request, body)
        if asked is None:
            await self.full.handle(scope, replay, send)
            return
        request.state.principal = remembered.principal
        await state.limiter.messages(request, remembered.principal)
        setattr(request.state, LIMIT_SPENT, True)
        remembered.principal.require_user()
        try:
            stored = await state.posts.post(
                remembered.resumption(), session_id, asked.role, asked.content, asked.metadata
            )
        except ResumptionRefused:
            state.principals.refused(credential)
            stored = None
        if stored is None:  # it starts a reply, its chat is locked, or the caller must be authenticated again
            await self.full.handle(scope, replay, send)
            return
        response = Response(
            MessageOut.model_validate(stored).model_dump_json(), status_code=201, media_type="application/json"
        )
        await response(scope, receive, send)


def _uuid(text: Any) -> uuid.UUID | None:
    """A chat id in its canonical form only: uuid.UUID also reads "urn:uuid:…", braces and ids without
    hyphens, whose fate is the route's validation's to decide."""
    try:
        parsed = uuid.UUID(text)
    except (TypeError, ValueError):
        return None
    return parsed if str(parsed) == text.lower() else None


def _message_create(request: Request, body: bytes) -> MessageCreate | None:
    """The body as the full path would accept it, or None for the full path to refuse it."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None
    try:
        return MessageCreate.model_validate(json.loads(body))
    except (ValueError, RecursionError, ValidationError):  # json's errors are ValueErrors
        return None


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the full path, once the body was read here: the body again, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
