"""Baseline for the realtime benchmark: one asyncpg LISTEN connection forwarding NOTIFY payloads to
WebSockets, with no authentication, no outbox and no replay."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

sockets: dict[str, set[WebSocket]] = defaultdict(set)
listener: Any = None


def forward(connection: Any, pid: int, channel: str, payload: str) -> None:
    user = json.loads(payload)["user"]
    for socket in list(sockets[user]):
        app.state.loop.create_task(socket.send_text(payload))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global listener
    import asyncio

    app.state.loop = asyncio.get_running_loop()
    listener = await asyncpg.connect(os.environ["BENCH_DSN"])
    await listener.add_listener("bench", forward)
    yield
    await listener.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws/{user}")
async def subscribe(websocket: WebSocket, user: str) -> None:
    await websocket.accept()
    sockets[user].add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        sockets[user].discard(websocket)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
