"""Streaming replies' text saved as they go, gathered across replies.

Every reply streaming in this process stores its text about once a second (so a reader arriving
later, or a restart, finds it). As a transaction per reply per second, 200 replies streaming at once
cost 200 transactions a second, on the same event loop that starts the next replies
(`make bench-assistants`). Saves are gathered like a group commit instead: while one round is
being written, the next round's saves wait together, and a round is one UPDATE per caller."""

from __future__ import annotations

import asyncio
import uuid

from papo.auth.service import Principal
from papo.chat.service import ChatService
from papo.db.engine import Database
from papo.settings import Settings

WRITERS = 4


class ProgressSaves:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        # by caller (one transaction each, under its row-level security): reply → (text, its answer)
        self.pending: dict[Principal, dict[uuid.UUID, tuple[str, asyncio.Future[bool]]]] = {}
        self.runner: asyncio.Task[None] | None = None
        self.writers = asyncio.Semaphore(WRITERS)
        self.rounds = 0

    async def save(self, principal: Principal, reply_id: uuid.UUID, text: str) -> bool:
        """Store the reply's text so far; False once it was stopped (it is no longer streaming)."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        earlier = self.pending.setdefault(principal, {}).get(reply_id)
        if earlier is not None and not earlier[1].done():  # superseded by this longer text
            answer = earlier[1]
        self.pending[principal][reply_id] = (text, answer)
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run(), name="papo-reply-progress")
        return await asyncio.shield(answer)

    async def _run(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, {}
            self.rounds += 1
            await asyncio.gather(*(self._write(principal, saves) for principal, saves in batch.items()))

    async def _write(self, principal: Principal, saves: dict[uuid.UUID, tuple[str, asyncio.Future[bool]]]) -> None:
        async with self.writers:  # a round of many callers borrows a few connections, not the pool
            try:
                async with self.db.transaction(principal.context()) as session:
                    streaming = await ChatService(session, principal, self.settings).save_replies_progress(
                        {reply_id: text for reply_id, (text, _) in saves.items()}
                    )
            except Exception as exc:
                for _, answer in saves.values():
                    if not answer.done():
                        answer.set_exception(exc)
                        answer.exception()  # retrieved: its reply may have been cancelled meanwhile
                return
        for reply_id, (_, answer) in saves.items():
            if not answer.done():
                answer.set_result(reply_id in streaming)
