"""Python client for papo's realtime stream: an async iterator that reconnects and resumes by itself.

    async for item in RealtimeClient("http://127.0.0.1:8000", token).events():
        if isinstance(item, Resync): ...refetch state...
        else: print(item.id, item.event, item.data)

On any disconnect it reconnects (with backoff, to the same or another server of the deployment)
and resumes after the last event id it yielded, so the caller sees every event once, in order.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]
FATAL_CLOSE_CODES = {4001, 4003, 4400}


@dataclass(frozen=True)
class RealtimeEvent:
    """`id` is None for live-only events (reply deltas): they are not replayed after a reconnect."""

    id: int | None
    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Resync:
    """The server no longer has every event since our cursor: refetch state, then carry on."""

    id: int


class GrowingReply:
    """A streaming reply's text as a reader rebuilds it: the stored text, then `reply.delta` events
    placed by offset. Deltas are live-only and the stored text is saved about once a second, so a
    reader that starts mid-reply can see a gap: those deltas wait in `pending` until `rebase()` is
    given a fresher stored text (refetch the message while `needs_refetch`)."""

    def __init__(self, content: str = "") -> None:
        self.text = content
        self.pending: dict[int, str] = {}

    @property
    def needs_refetch(self) -> bool:
        return bool(self.pending)

    def apply(self, offset: int, delta: str) -> None:
        if offset > len(self.text):
            self.pending[offset] = delta
            return
        if offset + len(delta) > len(self.text):
            self.text = self.text[:offset] + delta
        self._drain()

    def rebase(self, content: str) -> None:
        if len(content) > len(self.text):
            self.text = content
        self._drain()

    def _drain(self) -> None:
        for offset in sorted(self.pending):
            if offset > len(self.text):
                return
            delta = self.pending.pop(offset)
            if offset + len(delta) > len(self.text):
                self.text = self.text[:offset] + delta


class RealtimeClosed(Exception):
    """The server refused the stream for good (bad or expired credentials, bad request)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class RealtimeClient:
    def __init__(
        self,
        base_url: str | list[str],
        token: TokenSource,
        *,
        since: int | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else base_url
        self.urls = [u.rstrip("/").replace("http://", "ws://").replace("https://", "wss://") for u in urls]
        self.token = token
        self.last_id = since
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()

    async def _token(self) -> str:
        if isinstance(self.token, str):
            return self.token
        value = self.token()
        return await value if inspect.isawaitable(value) else value

    async def events(self) -> AsyncIterator[RealtimeEvent | Resync]:
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)] + "/api/v1/realtime"
            try:
                async with websockets.connect(url, subprotocols=[websockets.Subprotocol("papo.v1")]) as socket:
                    await socket.send(json.dumps({"type": "auth", "token": await self._token(), "since": self.last_id}))
                    async for raw in socket:
                        message = json.loads(raw)
                        kind = message.get("type")
                        if kind == "event":
                            self.last_id = message["id"]
                            yield RealtimeEvent(message["id"], message["event"], message["data"])
                        elif kind == "live":
                            yield RealtimeEvent(None, message["event"], message["data"])
                        elif kind == "ready":
                            if self.last_id is None:
                                self.last_id = message["id"]
                            attempt = 0
                            self.connected.set()
                        elif kind == "resync":
                            self.last_id = message["id"]
                            yield Resync(message["id"])
            except ConnectionClosed as closed:
                self.connected.clear()
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                if code in FATAL_CLOSE_CODES:
                    raise RealtimeClosed(code, closed.rcvd.reason if closed.rcvd else "") from closed
            except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
                self.connected.clear()
            attempt += 1
            await asyncio.sleep(min(self.max_backoff, 0.1 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2))
