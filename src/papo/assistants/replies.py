"""Assistant replies, generated in the background of the process that received the user's message.

The user's message and an empty `streaming` reply are committed by the request itself, so neither
can be lost. The reply then grows in its own short transactions: every `reply_flush_seconds` the text
so far is saved and the new part published as a `reply.delta` event (coalesced: not a write per
token). A client that reloads reads the saved text, then follows the deltas. Stopping is a write to the
row (from any process): the generator notices at its next save and quits without overwriting.
If the process dies, the sweep turns replies nobody has touched for `reply_stale_seconds` into
`interrupted` errors that can be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import structlog

from papo.assistants.providers import (
    Finished,
    ProviderClients,
    ProviderError,
    estimate_tokens,
    stream_demo,
    stream_openai,
)
from papo.assistants.service import AssistantService, KeyBox, ProviderTarget
from papo.assistants.usage import record as record_usage
from papo.auth.service import Principal
from papo.chat.service import ChatService
from papo.db.engine import Database, driver
from papo.settings import Settings

log = structlog.get_logger(__name__)
TITLE_INSTRUCTIONS = (
    "Write a short title (at most six words) for this conversation, in the language the user wrote in. "
    "Answer with the title only, no quotes."
)
TITLE_MAX_CHARS = 80


def fallback_title(question: str) -> str:
    """The first words of the question, when the model cannot suggest a title."""
    words = question.split()
    title = " ".join(words[:6])
    return (title + "…" if len(words) > 6 else title)[:TITLE_MAX_CHARS] or "New chat"


class ReplyManager:
    def __init__(self, db: Database, settings: Settings, keys: KeyBox) -> None:
        self.db = db
        self.settings = settings
        self.keys = keys
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.clients = ProviderClients(
            max_attempts=settings.reply_max_attempts, request_timeout=settings.reply_deadline_seconds
        )

    async def spawn(
        self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, assistant_id: uuid.UUID
    ) -> None:
        """Start generating (and return at once); call after the request that created the reply committed.
        Async so that FastAPI's background tasks run it on the event loop, not in a worker thread."""
        task = asyncio.create_task(
            self._generate_alive(principal, session_id, reply_id, assistant_id), name=f"reply-{reply_id}"
        )
        self.running[reply_id] = task
        task.add_done_callback(lambda _: self.running.pop(reply_id, None))

    async def shutdown(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        for task in list(self.running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.clients.close()

    async def sweep(self) -> int:
        """Replies left `streaming` by a process that died become retryable `interrupted` errors."""
        async with self.db.transaction() as session:
            rows = await driver(session).fetch(
                "SELECT * FROM papo_sweep_stale_replies(make_interval(secs => $1))", self.settings.reply_stale_seconds
            )
        if rows:
            log.warning("interrupted replies finished as errors", count=len(rows))
        for row in rows:  # tell each owner's open pages, in the owner's own context
            if row["stale_user_id"] is None:
                continue
            owner = Principal(row["stale_tenant_id"], row["stale_user_id"], "member")
            async with self.db.transaction(owner.context()) as session:
                await self._chat(session, owner).announce_update(row["stale_id"])
        return len(rows)

    async def _generate_alive(
        self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, assistant_id: uuid.UUID
    ) -> None:
        """Generate, while a heartbeat keeps the reply from looking abandoned (a slow first token
        must not let another process's sweep end it)."""
        heartbeat = asyncio.create_task(self._heartbeat(principal, reply_id))
        try:
            await self._generate(principal, session_id, reply_id, assistant_id)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, principal: Principal, reply_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(self.settings.reply_stale_seconds / 3)
            with contextlib.suppress(Exception):
                async with self.db.transaction(principal.context()) as session:
                    if not await self._chat(session, principal).touch_reply(reply_id):
                        return

    def _chat(self, session: Any, principal: Principal) -> ChatService:
        return ChatService(session, principal, self.settings)

    async def _generate(
        self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, assistant_id: uuid.UUID
    ) -> None:
        started = time.monotonic()
        first_token_at: float | None = None
        text = ""
        unsaved = ""
        finished: Finished | None = None
        meta: dict[str, Any] = {"assistant_id": str(assistant_id)}
        try:
            async with self.db.transaction(principal.context()) as session:
                target = await AssistantService(session, principal, self.settings, self.keys).target(assistant_id)
                history = await self._chat(session, principal).history_for_model(
                    session_id, target.context_token_budget - estimate_tokens(target.instructions), estimate_tokens
                )
            if target.instructions:
                history.insert(0, {"role": "system", "content": target.instructions})
            meta |= {
                "model": target.model,
                "provider": target.provider,
                "prompt_estimate": sum(estimate_tokens(m["content"]) for m in history),
            }
            async with asyncio.timeout(self.settings.reply_deadline_seconds):
                last_flush = 0.0  # the first token goes out at once; later ones are coalesced
                async with contextlib.aclosing(self._stream(target, history)) as stream:
                    async for piece in stream:
                        if isinstance(piece, Finished):
                            finished = piece
                            break
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                        text += piece
                        unsaved += piece
                        if time.monotonic() - last_flush >= self.settings.reply_flush_seconds:
                            if not await self._save(principal, session_id, reply_id, text, unsaved):
                                return  # stopped by the user: keep what they saw
                            unsaved, last_flush = "", time.monotonic()
            if not text.strip():
                raise ProviderError("the AI provider returned an empty answer")
            # The tail goes out as a delta too, so following the deltas alone gives the whole reply.
            if unsaved and not await self._save(principal, session_id, reply_id, text, unsaved):
                return
        except asyncio.CancelledError:
            await self._finish(
                principal, reply_id, text, meta | {"error": "interrupted: the server shut down"}, "interrupted"
            )
            raise
        except (ProviderError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, ProviderError) else "the reply took longer than the deadline"
            await self._finish(principal, reply_id, text, meta | {"error": reason}, "failed")
            return
        except Exception:
            log.exception("reply failed", reply_id=str(reply_id))
            await self._finish(
                principal, reply_id, text, meta | {"error": "internal error while writing the reply"}, "failed"
            )
            return
        assert finished is not None or text
        meta |= {
            "finish_reason": finished.finish_reason if finished else None,
            "usage": {
                "prompt_tokens": finished.prompt_tokens if finished else None,
                "completion_tokens": finished.completion_tokens if finished else None,
            },
            "time_to_first_token_ms": round(((first_token_at or started) - started) * 1000, 1),
            "total_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if await self._finish(principal, reply_id, text, meta, "complete"):
            await self._title(principal, session_id, target, history, text)

    async def _title(
        self,
        principal: Principal,
        session_id: uuid.UUID,
        target: ProviderTarget,
        history: list[dict[str, str]],
        reply: str,
    ) -> None:
        """After the first exchange, name the chat: the model's suggestion, or the first words."""
        questions = [m["content"] for m in history if m["role"] == "user"]
        if len(questions) != 1 or principal.user_id is None:
            return
        async with self.db.transaction(principal.context()) as session:
            chat = await self._chat(session, principal).get_chat_session(session_id, principal.user_id)
        if chat is None or chat.title is not None:
            return
        title = fallback_title(questions[0])
        if target.provider != "demo":
            prompt = [
                {"role": "system", "content": TITLE_INSTRUCTIONS},
                {"role": "user", "content": f"User: {questions[0][:1000]}\nAssistant: {reply[:1000]}"},
            ]
            titling = ProviderTarget(**{**vars(target), "parameters": {"max_tokens": 24, "temperature": 0.2}})
            suggested = ""
            try:
                async with asyncio.timeout(15):
                    async for piece in self._stream(titling, prompt):
                        if isinstance(piece, str):
                            suggested += piece
            except (ProviderError, TimeoutError):
                suggested = ""
            cleaned = " ".join(suggested.strip().strip('"').split())
            if cleaned:
                title = cleaned[:TITLE_MAX_CHARS]
        async with self.db.transaction(principal.context()) as session:
            await self._chat(session, principal).set_title_if_unset(session_id, principal.user_id, title)

    def _stream(self, target: ProviderTarget, history: list[dict[str, str]]) -> AsyncGenerator[str | Finished, None]:
        if target.provider == "demo":
            return stream_demo(target, history, tokens_per_second=self.settings.demo_tokens_per_second)
        return stream_openai(self.clients.get(target), target, history)

    async def _save(
        self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, text: str, delta: str
    ) -> bool:
        async with self.db.transaction(principal.context()) as session:
            return await self._chat(session, principal).save_reply_progress(reply_id, session_id, text, delta)

    async def _finish(
        self, principal: Principal, reply_id: uuid.UUID, text: str, meta: dict[str, Any], state: str
    ) -> bool:
        async with self.db.transaction(principal.context()) as session:
            finished = await self._chat(session, principal).finish_reply(
                reply_id, text, failed=state != "complete", metadata=meta, state=state
            )
            if finished and state == "complete":
                usage = meta.get("usage") or {}
                await record_usage(
                    session,
                    principal,
                    usage.get("prompt_tokens") or meta.get("prompt_estimate", 0),
                    usage.get("completion_tokens") or estimate_tokens(text),
                )
            return bool(finished)
