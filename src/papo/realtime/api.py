"""Realtime endpoints: WebSocket /api/v1/realtime and SSE /api/v1/events, with replay.

A stream subscribes to the process's hub *first*, then replays the outbox from the client's cursor
through RLS, then serves live events, skipping any id it already sent: nothing is lost or repeated
at the seam between replay and live. Live-only events (`{"type": "live"}`, e.g. reply deltas) carry
no id and are never replayed; SSE sends them without an `id:` line, so Last-Event-ID is unchanged.

A stream follows its principal (see papo.realtime.access): it ends when its token expires, when
the member is removed or their role changes, when the browser session it came from is signed out
(SSE with the cookie; a socket whose upgrade request carried the cookie, as the web app's does),
or when an API key is revoked. Streams per member and token refreshes per socket are limited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from papo.auth import web_sessions
from papo.auth.deps import CurrentPrincipal, DbSession
from papo.auth.service import Principal, authenticate
from papo.auth.tokens import TokenVerifier
from papo.db.engine import Database
from papo.errors import BadRequest, DomainError, Forbidden
from papo.realtime.codes import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
)
from papo.realtime.hub import EventHub, StreamEnded, Subscriber, TooManyStreams
from papo.realtime.service import Event, bounds, read_own_events, stamp_events
from papo.runtime import running
from papo.settings import Settings
from papo.waiting import wake_or_timeout

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1", tags=["realtime"])

REPLAY_BATCH = 500
# A refused socket's close code by the problem's HTTP status (503: the database is away; retry).
CLOSE_CODES = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN, 429: CLOSE_TOO_MANY, 503: CLOSE_TRY_AGAIN}
HEARTBEAT: dict[str, Any] = {"type": "heartbeat"}


class RealtimeRuntime(Protocol):
    """What the streams need from the running process."""

    settings: Settings
    db: Database
    hub: EventHub
    verifier: TokenVerifier


async def event_stream(
    state: RealtimeRuntime, subscriber: Subscriber, since: int | None
) -> AsyncIterator[dict[str, Any] | Event]:
    """Replay from `since`, then live events: events (each serialised once, `Event.wire_text`, for
    all its subscribers) and control messages (resync, ready, heartbeat) as wire dicts.
    `subscriber` must already be subscribed."""
    context = subscriber.principal.context()
    await state.hub.join_feed(subscriber)
    await stamp_events(state.db)  # "now" covers the writes this client saw return
    async with state.db.transaction(context) as session:
        pruned_through, head = await bounds(session)
    if since is None:
        last = head
    elif since < pruned_through:
        yield {"type": "resync", "detail": "events this old are no longer kept; refetch state", "id": head}
        last = head
    elif since > head:
        raise StreamEnded(CLOSE_BAD_REQUEST, f"since={since} is ahead of the newest event ({head})")
    else:
        last = since
    while True:
        async with state.db.transaction(context) as session:
            replayed = await read_own_events(session, last, REPLAY_BATCH)
        for event in replayed:
            assert event.id is not None  # the outbox numbers every event
            yield event
            last = event.id
        if len(replayed) < REPLAY_BATCH:
            break
    yield {"type": "ready", "id": last}
    heartbeat = state.settings.realtime_heartbeat_seconds
    leeway = state.settings.auth_leeway_seconds
    quiet_since = time.monotonic()
    held_back: Event | None = None  # taken from the queue just as a re-check began
    # One alarm per stream wakes it for its heartbeat or its token's expiry. It is set again only
    # when it rings, not per event: a busy stream arms no timer per message it sends.
    loop = asyncio.get_running_loop()
    alarm: asyncio.TimerHandle | None = None
    try:
        while True:
            if subscriber.ended is not None:
                raise StreamEnded(*subscriber.ended)
            if subscriber.closing.is_set():
                raise StreamEnded(CLOSE_GOING_AWAY, "server shutting down")
            if subscriber.overflowed.is_set() and subscriber.queue.empty() and held_back is None:
                raise StreamEnded(CLOSE_SLOW_CONSUMER, "too far behind; reconnect with your last id to resume")
            expires_at = subscriber.principal.expires_at
            if expires_at is not None and time.time() > expires_at + leeway:
                raise StreamEnded(CLOSE_UNAUTHORIZED, "token expired; reconnect (or send a fresh token) to resume")
            if not subscriber.cleared.is_set():  # access being re-checked: send nothing until it stands
                await wake_or_timeout(subscriber.cleared, 1.0)
                continue
            if held_back is not None:
                event, held_back = held_back, None
            elif not subscriber.queue.empty():  # a burst: taken without waiting
                if (queued := subscriber.queue.get_nowait()) is None:
                    continue
                event = queued
            else:
                due = heartbeat - (time.monotonic() - quiet_since)
                if due <= 0:
                    quiet_since = time.monotonic()
                    yield HEARTBEAT  # lets SSE keep proxies from closing an idle stream
                    continue
                if expires_at is not None:
                    due = min(due, expires_at + leeway - time.time())
                ring_at = loop.time() + max(due, 0.05)
                if alarm is None or alarm.when() <= loop.time() or alarm.when() > ring_at:  # none, rung or too late
                    if alarm is not None:
                        alarm.cancel()
                    alarm = loop.call_at(ring_at, subscriber.wake)
                # Asleep until an event or a wake-up (the alarm, Subscriber.end, a re-check).
                if (waiting := await subscriber.queue.get()) is None:
                    continue
                event = waiting
                if not subscriber.cleared.is_set() or subscriber.ended is not None:
                    held_back = event  # a notice arrived while we waited: the re-check decides
                    continue
            principal = subscriber.principal  # as of now: a refreshed token may carry another role
            if not event.visible_to(principal.tenant_id, principal.user_id, principal.role):
                continue
            if event.id is None:  # live: never replayed, so never a duplicate
                yield event
                quiet_since = time.monotonic()
            elif event.id > last:
                yield event
                last = event.id
                quiet_since = time.monotonic()
    finally:
        if alarm is not None:
            alarm.cancel()


def _parse_since(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("`since` must be a non-negative integer event id, or null")
    return value


@router.get("/events", response_class=StreamingResponse)
async def server_sent_events(
    request: Request,
    principal: CurrentPrincipal,
    session: DbSession,
    since: int | None = Query(default=None, ge=0, description="Last event id seen (or send Last-Event-ID)."),
    last_event_id: str | None = Header(default=None),
) -> StreamingResponse:
    """Server-sent events: the same stream as the WebSocket, resumable with Last-Event-ID. Over the
    per-member cap of open streams: 429."""
    principal.require_user()
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise BadRequest("Last-Event-ID must be an event id")
        since = int(last_event_id)
    state: RealtimeRuntime = running(request)
    limit = state.settings.realtime_max_streams_per_user
    if limit > 0 and state.hub.streams_of(principal) >= limit:
        raise TooManyStreams(limit)
    web_session_id = None
    if "authorization" not in request.headers and (cookie := request.cookies.get(web_sessions.SESSION_COOKIE)):
        # The principal came from this browser session (see current_principal): signing it out ends the stream.
        _, web_session_id = await web_sessions.authenticate(session, cookie)

    async def body() -> AsyncIterator[str]:
        try:
            subscriber = state.hub.subscribe(principal, "sse", web_session_id=web_session_id, max_per_user=limit)
        except TooManyStreams as refused:  # another stream opened since the check above
            yield f"event: error\ndata: {json.dumps({'type': 'error', 'detail': refused.detail})}\n\n"
            return
        try:
            async for message in event_stream(state, subscriber, since):
                if message is HEARTBEAT:
                    yield ": keep-alive\n\n"
                elif isinstance(message, Event):
                    prefix = f"id: {message.id}\n" if message.id is not None else ""
                    yield f"{prefix}event: {message.type}\ndata: {message.wire_text}\n\n"
                else:
                    yield f"event: {message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"
        except StreamEnded as ended:
            yield f"event: error\ndata: {json.dumps({'type': 'error', 'detail': ended.reason})}\n\n"
        finally:
            state.hub.unsubscribe(subscriber)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.websocket("/realtime")
async def realtime_socket(websocket: WebSocket) -> None:
    """First frame: {"type": "auth", "token": "…", "since": <last event id or null>}; later
    {"type": "auth", "token": "…"} refreshes the token and {"type": "ping"} is answered."""
    state: RealtimeRuntime = running(websocket)
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="papo.v1" if "papo.v1" in offered else None)
    try:
        frame = await asyncio.wait_for(_receive(websocket, state), timeout=state.settings.realtime_auth_timeout_seconds)
        if frame.get("type") != "auth":
            raise StreamEnded(CLOSE_UNAUTHORIZED, 'the first frame must be {"type": "auth", "token": …}')
        principal = await _authenticate(state, frame)
        since = _parse_since(frame.get("since"))
        web_session_id = await _browser_session(state, websocket, principal)
        subscriber = state.hub.subscribe(
            principal,
            "websocket",
            web_session_id=web_session_id,
            max_per_user=state.settings.realtime_max_streams_per_user,
        )
    except TimeoutError:
        await _close(websocket, CLOSE_UNAUTHORIZED, "no auth frame received in time")
        return
    except StreamEnded as ended:
        await _close(websocket, ended.code, ended.reason)
        return
    except DomainError as exc:
        code = CLOSE_CODES.get(exc.status, CLOSE_BAD_REQUEST)
        await _close(websocket, code, exc.detail)
        return
    except WebSocketDisconnect:
        return

    sender = asyncio.create_task(_send_events(websocket, state, subscriber, since))
    receiver = asyncio.create_task(_receive_controls(websocket, state, subscriber))
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        failure = next(iter(done)).exception()
        if isinstance(failure, StreamEnded):
            await _close(websocket, failure.code, failure.reason)
        elif failure is not None and not isinstance(failure, WebSocketDisconnect):
            log.error("realtime socket failed", exc_info=failure)
            await _close(websocket, CLOSE_INTERNAL, "internal error")
    finally:
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        state.hub.unsubscribe(subscriber)


async def _send_events(websocket: WebSocket, state: RealtimeRuntime, subscriber: Subscriber, since: int | None) -> None:
    async for message in event_stream(state, subscriber, since):
        if isinstance(message, Event):
            await websocket.send_text(message.wire_text)
        elif message is not HEARTBEAT:  # WebSocket liveness is the protocol's ping/pong
            await websocket.send_text(json.dumps(message, separators=(",", ":")))


async def _receive_controls(websocket: WebSocket, state: RealtimeRuntime, subscriber: Subscriber) -> None:
    limit = state.settings.realtime_auth_frames_per_minute
    refreshes: deque[float] = deque()  # when the last auth frames came, for the per-minute limit
    while True:
        try:
            frame = await _receive(websocket, state)
        except StreamEnded as ended:
            if ended.code == CLOSE_TOO_BIG:
                raise
            await websocket.send_text(json.dumps({"type": "error", "detail": ended.reason}))
            continue
        kind = frame.get("type")
        if kind == "ping":
            await websocket.send_text('{"type":"pong"}')
        elif kind == "auth":
            # Each one costs a signature check and a query, valid or not: count them all.
            now = time.monotonic()
            refreshes.append(now)
            while refreshes and refreshes[0] <= now - 60:
                refreshes.popleft()
            if limit > 0 and len(refreshes) > limit:
                raise StreamEnded(CLOSE_TOO_MANY, f"too many auth frames (at most {limit} a minute); reconnect")
            try:
                fresh = await _authenticate(state, frame)
            except DomainError as exc:
                await websocket.send_text(json.dumps({"type": "error", "detail": exc.detail}))
                continue
            current = subscriber.principal
            if (fresh.tenant_id, fresh.user_id) != (current.tenant_id, current.user_id):
                raise StreamEnded(CLOSE_FORBIDDEN, "a refreshed token must belong to the same user and tenant")
            subscriber.principal = fresh
            await websocket.send_text('{"type":"auth_ok"}')
        else:
            await websocket.send_text(json.dumps({"type": "error", "detail": f"unknown message type {kind!r}"}))


async def _receive(websocket: WebSocket, state: RealtimeRuntime) -> dict[str, Any]:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") if message.get("text") is not None else message.get("bytes")
    if raw is None:
        raise StreamEnded(CLOSE_BAD_REQUEST, "empty frame")
    if len(raw) > state.settings.realtime_max_frame_bytes:
        raise StreamEnded(CLOSE_TOO_BIG, f"frames are limited to {state.settings.realtime_max_frame_bytes} bytes")
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise StreamEnded(CLOSE_BAD_REQUEST, "frames must be JSON objects") from exc
    if not isinstance(frame, dict):
        raise StreamEnded(CLOSE_BAD_REQUEST, "frames must be JSON objects")
    return frame


async def _authenticate(state: RealtimeRuntime, frame: dict[str, Any]) -> Principal:
    token = frame.get("token")
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise StreamEnded(CLOSE_UNAUTHORIZED, "auth frame needs a `token` string")
    async with state.db.transaction() as session:
        principal = await authenticate(session, state.verifier, token)
    if principal.user_id is None:
        raise Forbidden("realtime streams belong to users; API keys cannot subscribe")
    return principal


async def _browser_session(state: RealtimeRuntime, websocket: WebSocket, principal: Principal) -> uuid.UUID | None:
    """The browser session behind a socket opened by the web app: its upgrade request carries the
    session cookie (the token in the auth frame was minted from it). Signing that session out ends
    the socket at once rather than when the token expires. A cookie of an ended session refuses it."""
    cookie = websocket.cookies.get(web_sessions.SESSION_COOKIE)
    if not cookie:
        return None
    async with state.db.transaction() as session:
        browser, web_session_id = await web_sessions.authenticate(session, cookie)
    if (browser.tenant_id, browser.user_id) != (principal.tenant_id, principal.user_id):
        return None  # someone else's browser: the token alone speaks for this socket
    return web_session_id


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "detail": reason}))
        await websocket.close(code=code, reason=reason[:120])
