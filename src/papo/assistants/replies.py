"""Assistant replies, generated in the background of the process that received the user's message.

The user's message and an empty `streaming` reply are committed by the request itself, so neither
can be lost. The reply then grows in two ways: every `reply_flush_seconds` the new text goes out as
a live `reply.delta` event (coalesced, no database write: the first one leaves at once, which is what
the time to first token is made of), and every `reply_save_seconds` the text so far is saved, so a
reader arriving mid-reply starts from it (see papo.client.GrowingReply). Stopping is a write to the
row (from any process): the generator here quits at once, one elsewhere at its next save, and either
way the stopped reply keeps all the text that was shown. If the process dies, the sweep turns replies
nobody has touched for `reply_stale_seconds` into `interrupted` errors that can be retried.

Why not a job queue: a reply is a stream that a person is watching, its latency is the product, and
its only durable state is the row; an extra hop through a queue would add to the first token and
buy nothing the sweep and retry do not already give.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import openai
import structlog

from papo.assistants.mcp import McpCatalog
from papo.assistants.progress import ProgressSaves
from papo.assistants.providers import (
    Finished,
    ProviderClients,
    ProviderError,
    ToolCalls,
    estimate_tokens,
    stream_demo,
    stream_openai,
)
from papo.assistants.service import AssistantService, ProviderTarget
from papo.assistants.tools import Toolbox, ToolService, fit_bytes, toolbox
from papo.assistants.usage import record as record_usage
from papo.auth.service import Principal
from papo.chat.models import MessageRole, MessageStatus
from papo.chat.service import ChatService
from papo.crypto import KeyBox
from papo.db.engine import Database, driver
from papo.knowledge.chat_files import MAX_IMAGES_FOR_MODEL, ChatFiles
from papo.knowledge.grounding import Grounding, ground, source_line
from papo.knowledge.indexer import KnowledgeIndexer
from papo.knowledge.repository import GroundingSources
from papo.knowledge.service import KnowledgeService, QuestionEmbedding
from papo.netguard import NetGuard
from papo.ops.metrics import record_ai_reply
from papo.realtime.hub import EventHub
from papo.realtime.service import Event
from papo.settings import Settings

log = structlog.get_logger(__name__)
TITLE_INSTRUCTIONS = (
    "Write a short title (at most six words) for this conversation, in the language the user wrote in. "
    "Answer with the title only, no quotes."
)
TITLES_AT_ONCE = 2
TITLE_MAX_CHARS = 80
DELTA_MAX_CHARS = 1000  # keeps a live event far below PostgreSQL's NOTIFY payload limit


@dataclass
class LiveReply:
    """What the generator knows that the database may not yet: all the text, and how much was sent."""

    text: str = ""
    sent: int = 0
    halted: bool = False


def fallback_title(question: str) -> str:
    """The first words of the question, when the model cannot suggest a title."""
    words = question.split()
    title = " ".join(words[:6])
    return (title + "…" if len(words) > 6 else title)[:TITLE_MAX_CHARS] or "New chat"


class ReplyManager:
    def __init__(self, db: Database, settings: Settings, keys: KeyBox, hub: EventHub) -> None:
        self.db = db
        self.settings = settings
        self.keys = keys
        self.hub = hub
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.live: dict[uuid.UUID, LiveReply] = {}
        self.progress = ProgressSaves(db, settings)
        # Naming a chat is one more provider call and two transactions; a burst of first replies
        # would start as many at once, beside the replies still starting (`make bench-assistants`).
        self.titling = asyncio.Semaphore(TITLES_AT_ONCE)
        # Called with (principal, session id, reply id, text, hand off) when a reply is complete: the
        # WhatsApp inbox sends its bot's replies out this way (and hands the conversation to a person
        # when the bot did not find the answer in the company's documents).
        self.on_complete: Callable[[Principal, uuid.UUID, uuid.UUID, str, bool], Awaitable[None]] | None = None
        # Where assistants with collections look things up (the app sets it; None: no knowledge base).
        self.knowledge: KnowledgeIndexer | None = None
        self.guard = NetGuard.from_settings(settings)  # tools are tenant-set URLs
        self.mcp = McpCatalog()
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

    def text_so_far(self, reply_id: uuid.UUID) -> str | None:
        """The reply's whole text, if this process is generating it (None: ask the database)."""
        live = self.live.get(reply_id)
        return live.text if live is not None else None

    async def halt(self, reply_id: uuid.UUID) -> None:
        """Stop generating a reply whose stop was committed (no-op if another process generates it:
        that one notices at its next save)."""
        live = self.live.get(reply_id)
        if live is not None:
            live.halted = True

    async def shutdown(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        for task in list(self.running.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.clients.close()

    async def transcribe(
        self, principal: Principal, assistant_id: uuid.UUID, audio: IO[bytes], file_name: str, mime_type: str
    ) -> str | None:
        """A voice note as text, through the assistant's provider's OpenAI-compatible transcription
        endpoint; None when the provider has none (the demo, a server without it) or it fails."""
        async with self.db.transaction(principal.context()) as session:
            target = await AssistantService(session, principal, self.settings, self.keys).target(assistant_id)
        if target.provider == "demo":
            return None
        try:
            # the tenant chose the provider: a slow one must not hold a download worker for long
            async with asyncio.timeout(self.settings.reply_deadline_seconds):
                done = await self.clients.get(target).audio.transcriptions.create(
                    model=self.settings.transcription_model, file=(file_name, audio, mime_type)
                )
        except (openai.OpenAIError, TimeoutError) as exc:
            log.warning("transcription failed", assistant=str(assistant_id), error=str(exc) or type(exc).__name__)
            return None
        return done.text.strip() or None

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
        live = self.live[reply_id] = LiveReply()
        finished: Finished | None = None
        meta: dict[str, Any] = {"assistant_id": str(assistant_id)}
        try:
            async with self.db.transaction(principal.context()) as session:
                target = await AssistantService(session, principal, self.settings, self.keys).target(assistant_id)
                history: list[dict[str, Any]] = await self._chat(session, principal).history_for_model(
                    session_id, target.context_token_budget - estimate_tokens(target.instructions), estimate_tokens
                )
                tool_rows = await ToolService(session, principal, self.keys, self.guard).list(assistant_id)
                sources = None
                if self.knowledge is not None:
                    sources = await KnowledgeService(session, principal, self.settings).grounding_sources(
                        assistant_id, session_id
                    )
            tools, unavailable = await toolbox(
                tool_rows, self.db, principal, session_id, self.keys, self.guard, self.mcp, self.settings
            )
            if unavailable:
                meta["tool_servers_unavailable"] = unavailable
            files = ChatFiles(self.knowledge) if self.knowledge is not None else None
            grounding = await self._ground(principal, session_id, history, files, sources)
            if grounding.system is not None:
                history.insert(0, {"role": "system", "content": grounding.system})
            if target.instructions:
                history.insert(0, {"role": "system", "content": target.instructions})
            meta |= {
                "model": target.model,
                "provider": target.provider,
                "prompt_estimate": sum(estimate_tokens(m["content"]) for m in history),
            } | grounding.metadata()
            prompt = await self._with_files(target, history, files)
            async with asyncio.timeout(self.settings.reply_deadline_seconds):
                last_flush = last_save = 0.0  # the first token goes out at once; later ones are coalesced
                steps = self.settings.reply_max_tool_steps
                for step in range(steps + 1):
                    # tools are offered until the step limit; then the model must answer with what it has
                    offer = tools.specs() if tools and step < steps else None
                    answer = self._unknown(principal) if grounding.unknown else self._stream(target, prompt, offer)
                    step_started, asked = len(live.text), None
                    async with contextlib.aclosing(answer) as stream:
                        async for piece in stream:
                            if isinstance(piece, Finished):
                                finished = piece
                                break
                            if isinstance(piece, ToolCalls):
                                asked = piece
                                continue
                            if live.halted:
                                return await self._keep_stopped(principal, session_id, reply_id, live.text, history)
                            if first_token_at is None:
                                first_token_at = last_save = time.monotonic()
                            live.text += piece
                            now = time.monotonic()
                            if now - last_flush >= self.settings.reply_flush_seconds:
                                self._publish_delta(principal, session_id, reply_id, live)
                                last_flush = now
                            if now - last_save >= self.settings.reply_save_seconds:
                                if not await self.progress.save(principal, reply_id, live.text):
                                    return await self._keep_stopped(principal, session_id, reply_id, live.text, history)
                                last_save = time.monotonic()
                    if asked is None:
                        break
                    meta["tool_calls"] = meta.get("tool_calls", 0) + len(asked.calls)
                    meta["tool_steps_exhausted"] = step + 1 == steps
                    await self._call_tools(
                        principal, session_id, reply_id, tools, asked, prompt, live.text[step_started:]
                    )
            if not live.text.strip():
                raise ProviderError("the AI provider returned an empty answer")
            if grounding.sources and principal.is_service and self.settings.knowledge_whatsapp_sources:
                live.text += "\n\n" + source_line(grounding.sources)  # a WhatsApp customer sees no metadata
            # The tail goes out as a delta too, so following the deltas alone gives the whole reply.
            self._publish_delta(principal, session_id, reply_id, live)
        except asyncio.CancelledError:
            await self._finish(
                principal, reply_id, live.text, meta | {"error": "interrupted: the server shut down"}, "interrupted"
            )
            raise
        except (ProviderError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, ProviderError) else "the reply took longer than the deadline"
            await self._finish(principal, reply_id, live.text, meta | {"error": reason}, "failed")
            return
        except Exception:
            log.exception("reply failed", reply_id=str(reply_id))
            await self._finish(
                principal, reply_id, live.text, meta | {"error": "internal error while writing the reply"}, "failed"
            )
            return
        finally:
            self.live.pop(reply_id, None)
        meta |= {
            "finish_reason": finished.finish_reason if finished else None,
            "usage": {
                "prompt_tokens": finished.prompt_tokens if finished else None,
                "completion_tokens": finished.completion_tokens if finished else None,
            },
            "time_to_first_token_ms": round(((first_token_at or started) - started) * 1000, 1),
            "total_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if await self._finish(principal, reply_id, live.text, meta, "complete"):
            await self._title(principal, session_id, target, history, live.text)
            if self.on_complete is not None:
                hand_off = grounding.unknown or tools.builtins.handed_over
                await self.on_complete(principal, session_id, reply_id, live.text, hand_off)
        else:  # stopped after the last token
            await self._keep_stopped(principal, session_id, reply_id, live.text, history)

    async def _ground(
        self,
        principal: Principal,
        session_id: uuid.UUID,
        history: list[dict[str, Any]],
        files: ChatFiles | None,
        sources: GroundingSources | None,
    ) -> Grounding:
        question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        if self.knowledge is None or files is None or sources is None or not question.strip():
            return Grounding()
        chat_passages = sources.chat_passages
        if any(file["kind"] == "document" for m in history for file in m.get("files") or ()):
            await files.read_documents(principal, session_id)
            chat_passages = True  # perhaps only now
        if not sources.collections and not chat_passages:
            return Grounding()  # nowhere to look: no transaction, no embedding
        asked = QuestionEmbedding(self.knowledge.embedder, self.knowledge.vectors, question)
        attached = await files.search(principal, session_id, asked) if chat_passages else []
        return await ground(self.db, principal, self.settings, sources.collections, asked, attached)

    async def _with_files(
        self, target: ProviderTarget, history: list[dict[str, Any]], files: ChatFiles | None
    ) -> list[dict[str, Any]]:
        """The messages as the model takes them: a user's newest photos as image parts when the model
        takes images, every other file named in the text."""
        images_left = MAX_IMAGES_FOR_MODEL if target.accepts_images and target.provider != "demo" else 0
        prompt: list[dict[str, Any]] = []
        for message in reversed(history):
            attached = message.get("files")
            if not attached:
                prompt.append(message)
                continue
            text, parts = message["content"], []
            for file in attached:
                if file["kind"] == "image" and images_left > 0 and files is not None:
                    try:
                        part = await files.image_part(file)
                    except Exception:  # a file gone from the store: the text still names it
                        log.warning("attached image unreadable", blob_key=file.get("blob_key"))
                        part = None
                    if part is not None:
                        parts.append(part)
                        images_left -= 1
                        continue
                text += f"\n[{'image' if file['kind'] == 'image' else 'document'}: {file.get('file_name') or 'file'}]"
            content: Any = [{"type": "text", "text": text}, *parts] if parts else text
            prompt.append({"role": message["role"], "content": content})
        prompt.reverse()
        return prompt

    async def _call_tools(
        self,
        principal: Principal,
        session_id: uuid.UUID,
        reply_id: uuid.UUID,
        tools: Toolbox,
        asked: ToolCalls,
        history: list[dict[str, Any]],
        said: str,
    ) -> None:
        """Run the calls the model asked for, one after another, each recorded in the chat as a
        `tool` message (what was asked, what came back, how long it took), and give the model the
        results to continue from."""
        history.append(
            {
                "role": "assistant",
                "content": said or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in asked.calls
                ],
            }
        )
        context = {"assistant_reply_id": str(reply_id), "session_id": str(session_id)}
        for call in asked.calls:
            result = await tools.call(call, context)
            metadata = {
                "tool": call.name,
                "call_id": call.id,
                "arguments": call.arguments[:4000],
                "ok": result.ok,
                "error": result.error,
                "duration_ms": result.duration_ms,
                "reply_id": str(reply_id),
            }
            async with self.db.transaction(principal.context()) as session:
                await self._chat(session, principal).add_message(
                    session_id,
                    MessageRole.tool,
                    fit_bytes(result.content, self.settings.max_message_bytes),
                    metadata=metadata,
                    status=MessageStatus.delivered,
                )
            history.append({"role": "tool", "tool_call_id": call.id, "content": result.content})

    async def _unknown(self, principal: Principal) -> AsyncGenerator[str | ToolCalls | Finished, None]:
        """The answer when the documents do not have one (no model is asked): on WhatsApp (the bot
        runs as the tenant's service principal) it says a person will take over."""
        settings = self.settings
        yield settings.knowledge_handoff_reply if principal.is_service else settings.knowledge_unknown_reply
        yield Finished("knowledge_not_found", 0, 0)

    def _publish_delta(self, principal: Principal, session_id: uuid.UUID, reply_id: uuid.UUID, live: LiveReply) -> None:
        """Send the text not yet sent, in pieces small enough for a NOTIFY payload."""
        while live.sent < len(live.text):
            piece = live.text[live.sent : live.sent + DELTA_MAX_CHARS]
            data = {"id": str(reply_id), "session_id": str(session_id), "offset": live.sent, "delta": piece}
            audience = "user" if principal.user_id is not None else "staff"
            self.hub.publish_live(Event(None, principal.tenant_id, audience, principal.user_id, "reply.delta", data))
            live.sent += len(piece)

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
        async with self.titling:
            await self._name_chat(principal, principal.user_id, session_id, target, questions[0], reply)

    async def _name_chat(
        self,
        principal: Principal,
        user_id: str,
        session_id: uuid.UUID,
        target: ProviderTarget,
        question: str,
        reply: str,
    ) -> None:
        async with self.db.transaction(principal.context()) as session:
            chat = await self._chat(session, principal).get_chat_session(session_id, user_id)
        if chat is None or chat.title is not None:
            return
        title = fallback_title(question)
        if target.provider != "demo":
            prompt = [
                {"role": "system", "content": TITLE_INSTRUCTIONS},
                {"role": "user", "content": f"User: {question[:1000]}\nAssistant: {reply[:1000]}"},
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
            await self._chat(session, principal).set_title_if_unset(session_id, user_id, title)

    def _stream(
        self, target: ProviderTarget, history: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> AsyncGenerator[str | ToolCalls | Finished, None]:
        if target.provider == "demo":
            return stream_demo(target, history, tokens_per_second=self.settings.demo_tokens_per_second)
        return stream_openai(self.clients.get(target), target, history, tools)

    async def _keep_stopped(
        self,
        principal: Principal,
        session_id: uuid.UUID,
        reply_id: uuid.UUID,
        text: str,
        history: list[dict[str, Any]],
    ) -> None:
        """Keep what was shown; a chat whose first reply was stopped is still named (by its question:
        no model is asked for a title of a reply the user cut short)."""
        questions = [m["content"] for m in history if m["role"] == "user"]
        async with self.db.transaction(principal.context()) as session:
            chat = self._chat(session, principal)
            await chat.keep_stopped_text(reply_id, text)
            if len(questions) == 1 and principal.user_id is not None:
                await chat.set_title_if_unset(session_id, principal.user_id, fallback_title(questions[0]))

    async def _finish(
        self, principal: Principal, reply_id: uuid.UUID, text: str, meta: dict[str, Any], state: str
    ) -> bool:
        async with self.db.transaction(principal.context()) as session:
            finished = await self._chat(session, principal).finish_reply(
                reply_id, text, failed=state != "complete", metadata=meta, state=state
            )
            if finished:
                record_ai_reply(meta, state)
            if finished and state == "complete" and principal.user_id is not None:
                usage = meta.get("usage") or {}
                await record_usage(
                    session,
                    principal,
                    usage.get("prompt_tokens") or meta.get("prompt_estimate", 0),
                    usage.get("completion_tokens") or estimate_tokens(text),
                )
            return bool(finished)
