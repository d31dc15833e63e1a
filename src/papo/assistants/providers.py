"""Model providers: any OpenAI-compatible endpoint through the official SDK, and the built-in demo.

A provider turns a chat history into a stream of text deltas followed by one `Finished` record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import openai

from papo.assistants.service import ProviderTarget
from papo.assistants.tools import ToolCall
from papo.knowledge.grounding import passages_shown
from papo.netguard import NOT_ALLOWED, TargetRefused

DEMO_NOTICE = "papo demo assistant (no AI provider is configured)"


@dataclass(frozen=True)
class Finished:
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class ToolCalls:
    """The model asked for these tools to be called before it answers."""

    calls: list[ToolCall]


class ProviderError(Exception):
    """A failure worth showing the user: what went wrong, in a sentence."""


def estimate_tokens(text: str) -> int:
    """Rough count without downloading a tokenizer: ~4 characters per token, plus per-message overhead."""
    return len(text) // 4 + 4


class ProviderClients:
    """One SDK client (and so one pool of kept-alive connections) per endpoint and key."""

    def __init__(self, *, max_attempts: int, request_timeout: float) -> None:
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self.clients: dict[tuple[str | None, str | None, bool], openai.AsyncOpenAI] = {}

    def get(self, target: ProviderTarget) -> openai.AsyncOpenAI:
        key = (target.base_url, target.api_key, target.guard is not None)
        if key not in self.clients:
            # A URL the tenant chose is reached only through the guard, redirects included (each hop
            # connects through it); the operator's own endpoints keep the SDK's plain client.
            # (An httpx client: the SDK takes one as well as its own httpx2 ones, which its types omit.)
            http_client: Any = (
                target.guard.client(timeout=self.request_timeout, follow_redirects=True) if target.guard else None
            )
            self.clients[key] = openai.AsyncOpenAI(
                base_url=target.base_url,
                api_key=target.api_key or "not-needed",  # local servers (Ollama, vLLM) accept any key
                max_retries=max(0, self.max_attempts - 1),  # the SDK retries 408/409/429/5xx and timeouts
                timeout=self.request_timeout,
                http_client=http_client,
            )
        return self.clients[key]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.clients.clear()


async def stream_openai(
    client: openai.AsyncOpenAI,
    target: ProviderTarget,
    history: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> AsyncGenerator[str | ToolCalls | Finished, None]:
    """Text deltas; the tool calls the model asked for (once, complete, before Finished); Finished."""
    finish_reason = None
    usage: Any = None
    calls: dict[int, dict[str, str]] = {}  # by the delta's index: id, name and the arguments so far
    try:
        # The SDK's overloads type every message shape; ours are plain role/content dicts.
        create: Any = client.chat.completions.create
        stream = await create(
            model=target.model,
            messages=history,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=target.parameters or None,  # temperature, top_p, max_tokens…, validated on input
            **({"tools": tools} if tools else {}),
        )
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    yield choice.delta.content
                for delta in (choice.delta.tool_calls or []) if choice.delta else []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
    except TargetRefused as exc:  # raised where the connection is made, so the SDK passes it through
        raise ProviderError(f"{NOT_ALLOWED}: this server does not let assistants reach that provider") from exc
    except openai.AuthenticationError as exc:
        raise ProviderError("the AI provider rejected the API key (401)") from exc
    except openai.NotFoundError as exc:
        raise ProviderError(f"the AI provider does not know model {target.model!r}") from exc
    except openai.RateLimitError as exc:
        raise ProviderError("the AI provider kept answering 429 (rate limited)") from exc
    except openai.APITimeoutError as exc:
        raise ProviderError("the AI provider did not answer in time") from exc
    except openai.APIConnectionError as exc:
        # Never the cause's text: it would say what answered (or refused) on which address and port.
        raise ProviderError("the AI provider is unreachable, or it closed the stream early") from exc
    except openai.APIStatusError as exc:
        raise ProviderError(f"the AI provider failed ({exc.status_code})") from exc
    except (openai.APIError, ValueError) as exc:
        raise ProviderError("the AI provider sent a malformed response") from exc
    if finish_reason is None:
        # Every OpenAI-compatible server ends a stream with a finish_reason; without one the answer
        # was cut short (a dropped connection, or a chunk the SDK could not parse).
        raise ProviderError("the AI provider closed the stream early or sent a malformed response")
    if calls:
        yield ToolCalls(
            [
                ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"])
                for index, call in sorted(calls.items())
            ]
        )
    yield Finished(
        finish_reason,
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
    )


async def stream_demo(
    target: ProviderTarget, history: list[dict[str, Any]], *, tokens_per_second: float
) -> AsyncGenerator[str | Finished, None]:
    """A deterministic answer at a realistic pace, so papo works offline. Always says what it is."""
    question = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
    excerpt = " ".join(question.split()[:30])
    answer = (
        f"({DEMO_NOTICE}.) You wrote: “{excerpt}”. "
        "Set PAPO_OPENAI_BASE_URL and PAPO_OPENAI_API_KEY, or give this assistant its own provider, "
        "and a real model will answer here, streamed just like this."
    )
    grounded = next((shown for m in history if m["role"] == "system" and (shown := passages_shown(m["content"]))), None)
    if grounded is not None:  # show the knowledge flow offline: the best passage, cited
        header, _, passage = grounded.partition("\n")
        passage = " ".join(passage.split("\n\n[2]")[0].split())
        answer = f"({DEMO_NOTICE}.) {header}: “{passage[:400]}” [1]"
    words = answer.split(" ")
    for index, word in enumerate(words):
        yield word if index == 0 else " " + word
        await asyncio.sleep(1 / tokens_per_second)
    prompt = sum(estimate_tokens(m["content"]) for m in history)
    yield Finished("stop", prompt, estimate_tokens(answer))
