"""A local OpenAI-compatible server speaking the real wire format (SSE chunks, usage in the last
chunk, [DONE]), with faults chosen by the model name. Used through the real `openai` SDK."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from papo.assistants.replies import TITLE_INSTRUCTIONS

API_KEY = "sk-fake-key"


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.transcribed: list[tuple[str, str, bytes]] = []  # model, file name, audio
        self.transcript = "qual o horário de sábado?"
        self.embedded: list[list[str]] = []  # the inputs of every embeddings request
        self.titling_now = self.most_titling_at_once = 0  # streams asked to name a chat
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    async def transcriptions(self, request: Request) -> Response:
        """OpenAI's transcription endpoint (multipart: file, model): the configured transcript."""
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key"}}, 401)
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        self.transcribed.append((str(form["model"]), upload.filename or "", await upload.read()))
        return JSONResponse({"text": self.transcript})

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's embeddings endpoint: a deterministic 64-dimension vector per input (words hashed,
        so texts sharing words are close). Model "fake-embed-500" fails; "fake-embed-short" answers
        one vector too few."""
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key"}}, 401)
        body = await request.json()
        model, inputs = body["model"], body["input"]
        self.calls[model] += 1
        self.embedded.append(list(inputs))
        if model == "fake-embed-500":
            return JSONResponse({"error": {"message": "embeddings are down"}}, 500)
        vectors = [fake_embedding(text) for text in inputs]
        if model == "fake-embed-short":
            vectors = vectors[:-1]
        return JSONResponse(
            {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    @staticmethod
    def chunk(content: str | None = None, finish: str | None = None) -> str:
        delta = {"content": content} if content is not None else {}
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    @staticmethod
    def usage_chunk(prompt: int, completion: int) -> str:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "fake",
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
        return f"data: {json.dumps(body)}\n\n"

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        model: str = body["model"]
        self.calls[model] += 1
        if request.headers.get("authorization") != f"Bearer {API_KEY}" or model == "fake-401":
            return JSONResponse({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, 401)
        if model == "fake-429-once" and self.calls[model] == 1:
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"retry-after-ms": "10"})
        if model == "fake-500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if model == "fake-unknown":
            return JSONResponse({"error": {"message": "The model does not exist"}}, 404)
        question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if model in ("fake-tools", "fake-tools-loop"):
            return StreamingResponse(self.tool_turn(model, body, question), media_type="text/event-stream")
        words = f"Echo: {question}".split(" ")
        if any(m["role"] == "system" and m["content"] == TITLE_INSTRUCTIONS for m in body["messages"]):
            return StreamingResponse(self.titling(self.stream(model, words)), media_type="text/event-stream")
        return StreamingResponse(self.stream(model, words), media_type="text/event-stream")

    async def titling(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        self.titling_now += 1
        self.most_titling_at_once = max(self.most_titling_at_once, self.titling_now)
        try:
            async for piece in stream:
                yield piece
        finally:
            self.titling_now -= 1

    async def tool_turn(self, model: str, body: dict[str, Any], question: str) -> AsyncIterator[str]:
        """Function calling as OpenAI streams it. "fake-tools" calls the first tool offered (or the one
        a question "tool:<name> <query>" names) with {"query": <the question, or the query>}, then
        answers with what the tool said; "fake-tools-loop" calls it for as long as tools are offered."""
        last = body["messages"][-1]
        tools = body.get("tools") or []
        if tools and (model == "fake-tools-loop" or last["role"] != "tool"):
            # "tool:<name> rest" asks for that tool, with the rest as the query
            wanted = re.match(r"tool:(\S+)\s*(.*)", question, re.DOTALL)
            offered = [tool["function"]["name"] for tool in tools]
            name = wanted.group(1) if wanted and wanted.group(1) in offered else offered[0]
            arguments = json.dumps({"query": wanted.group(2) if wanted else question})
            call_id = f"call_{self.calls[model]}"
            for index, piece in enumerate((arguments[:5], arguments[5:])):  # arguments arrive in pieces
                function = {"name": name, "arguments": piece} if index == 0 else {"arguments": piece}
                delta = {"tool_calls": [{"index": 0, "type": "function", "function": function}]}
                if index == 0:
                    delta["tool_calls"][0]["id"] = call_id
                yield self.raw_chunk(delta, None)
            yield self.raw_chunk({}, "tool_calls")
        else:
            said = last["content"] if last["role"] == "tool" else "no tool"
            yield self.chunk(f"Tool said: {said}" if model == "fake-tools" else "Done after tools")
            yield self.chunk(finish="stop")
        yield self.usage_chunk(prompt=11, completion=3)
        yield "data: [DONE]\n\n"

    @staticmethod
    def raw_chunk(delta: dict[str, Any], finish: str | None) -> str:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self, model: str, words: list[str]) -> AsyncIterator[str]:
        pace = 0.15 if model == "fake-slow" else 0.005
        if model == "fake-slow":
            words = [*words, *(f"w{i}" for i in range(30))]
        if model == "fake-empty":
            words = []
        for index, word in enumerate(words):
            if model == "fake-malformed" and index == 1:
                yield "data: {this is not json\n\n"
                return
            if model == "fake-early-close" and index == 1:
                raise ConnectionResetError("provider went away")
            yield self.chunk(word if index == 0 else " " + word)
            await asyncio.sleep(pace)
        yield self.chunk(finish="stop")
        yield self.usage_chunk(prompt=11, completion=len(words))
        yield "data: [DONE]\n\n"


def fake_embedding(text: str, dimensions: int = 64) -> list[float]:
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % dimensions] += 1.0 if digest[1] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]
