"""The bare baseline for the message-path benchmark: FastAPI + asyncpg, one INSERT, no auth, no RLS."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI
from pydantic import BaseModel

pool: Any = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=10, max_size=10)
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


class Body(BaseModel):
    content: str


@app.post("/sessions/{session_id}/messages", status_code=201)
async def insert(session_id: uuid.UUID, body: Body) -> dict[str, Any]:
    row = await pool.fetchrow(
        "INSERT INTO bench_baseline_messages (id, session_id, content) VALUES ($1, $2, $3) RETURNING *",
        uuid.uuid4(),
        session_id,
        body.content,
    )
    return dict(row)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
