"""Tools an assistant may call: a tenant's HTTP tools, defined here and called while a reply is
written (through the SDK's function calling; see papo.assistants.replies).

A call is a POST of JSON to the tool's URL, through the outbound guard (public addresses only,
each redirect checked), signed like papo's outbound webhooks (Standard Webhooks: webhook-id,
webhook-timestamp, webhook-signature over the body, with the tool's `whsec_` secret), so the
company can verify that papo sent it. Whatever goes wrong — a timeout, an error status, an answer
too large, arguments the model got wrong — becomes the tool's result, an error the model reads and
answers around: a failing tool never costs the reply."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.assistants.models import AssistantTool
from papo.auth.service import Principal
from papo.crypto import KeyBox, new_signing_secret, signature_headers
from papo.db.base import new_id
from papo.db.engine import rows_changed
from papo.errors import Conflict, Forbidden, InvalidInput, NotFound
from papo.netguard import NetGuard, TargetRefused

MAX_RESULT_BYTES = 64 * 1024  # what a tool may answer
RESULT_FOR_MODEL_CHARS = 16_000  # what of it the model is shown
TOOL_NOT_FOUND = "tool not found"


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: its id (to pair the result), the tool and the JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model reads
    ok: bool
    error: str | None
    duration_ms: float


def fit_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    encoded = text.encode()
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", errors="ignore")


def tool_view(tool: AssistantTool) -> dict[str, Any]:
    return {
        "id": tool.id,
        "assistant_id": tool.assistant_id,
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "url": tool.url,
        "timeout_seconds": tool.timeout_seconds,
        "enabled": tool.enabled,
        "created_at": tool.created_at,
        "updated_at": tool.updated_at,
    }


class ToolService:
    """Admins (and API keys) define an assistant's tools; row-level security holds them to it too."""

    def __init__(self, db: AsyncSession, principal: Principal, keys: KeyBox, guard: NetGuard) -> None:
        self.db = db
        self.principal = principal
        self.keys = keys
        self.guard = guard

    def _require_writer(self) -> None:
        if not (self.principal.is_admin or self.principal.is_service):
            raise Forbidden("only tenant admins (and API keys) manage an assistant's tools")

    async def list(self, assistant_id: uuid.UUID) -> list[AssistantTool]:
        query = select(AssistantTool).where(
            AssistantTool.tenant_id == self.principal.tenant_id, AssistantTool.assistant_id == assistant_id
        )
        return list((await self.db.scalars(query.order_by(AssistantTool.name))).all())

    async def create(self, assistant_id: uuid.UUID, values: dict[str, Any]) -> tuple[AssistantTool, str]:
        """The new tool and its signing secret (shown this once)."""
        self._require_writer()
        await self._check_url(values["url"])
        secret = new_signing_secret()
        tool = AssistantTool(
            tenant_id=self.principal.tenant_id,
            id=new_id(),
            assistant_id=assistant_id,
            secret_encrypted=self.keys.seal(secret),
            **values,
        )
        self.db.add(tool)
        try:
            async with self.db.begin_nested():
                await self.db.flush()
        except IntegrityError as exc:
            raise Conflict(f"this assistant already has a tool named {values['name']!r}") from exc
        await self.db.refresh(tool)
        return tool, secret

    async def delete(self, assistant_id: uuid.UUID, tool_id: uuid.UUID) -> None:
        self._require_writer()
        statement = delete(AssistantTool).where(
            AssistantTool.tenant_id == self.principal.tenant_id,
            AssistantTool.assistant_id == assistant_id,
            AssistantTool.id == tool_id,
        )
        if not await rows_changed(self.db, statement):
            raise NotFound(TOOL_NOT_FOUND)

    async def _check_url(self, url: str) -> None:
        try:
            await self.guard.check_url(url)
        except TargetRefused as exc:
            raise InvalidInput(str(exc) or "this URL is not allowed", field="url") from exc


class Toolbox:
    """The enabled tools of one assistant, for one reply."""

    def __init__(self, tools: list[AssistantTool], keys: KeyBox, guard: NetGuard) -> None:
        self.tools = {tool.name: tool for tool in tools if tool.enabled}
        self.keys = keys
        self.guard = guard

    def __bool__(self) -> bool:
        return bool(self.tools)

    def specs(self) -> list[dict[str, Any]]:
        """The tools as the OpenAI chat API takes them (function calling)."""
        return [
            {
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
            }
            for tool in self.tools.values()
        ]

    async def call(self, call: ToolCall, context: dict[str, str]) -> ToolResult:
        started = time.monotonic()

        def failed(reason: str) -> ToolResult:
            return ToolResult(
                json.dumps({"error": reason}), False, reason, round((time.monotonic() - started) * 1000, 1)
            )

        tool = self.tools.get(call.name)
        if tool is None:
            return failed(f"there is no tool named {call.name!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            return failed("the arguments were not valid JSON")
        if not isinstance(arguments, dict):
            return failed("the arguments must be a JSON object")
        body = json.dumps(
            {"tool": tool.name, "call_id": call.id, "arguments": arguments, **context}, ensure_ascii=False
        )
        signed = signature_headers(self.keys.open(tool.secret_encrypted), f"msg_{call.id}"[:64], body)
        headers = {"content-type": "application/json", "user-agent": "papo-tools/1", **signed}
        try:
            async with (
                asyncio.timeout(tool.timeout_seconds),  # the whole call, however slowly bytes trickle
                self.guard.client(timeout=tool.timeout_seconds, follow_redirects=True) as http,
                http.stream("POST", tool.url, content=body.encode(), headers=headers) as answer,
            ):
                received = bytearray()
                async for chunk in answer.aiter_bytes():
                    received.extend(chunk)
                    if len(received) > MAX_RESULT_BYTES:
                        return failed(f"the tool answered more than {MAX_RESULT_BYTES // 1024} KB")
                if not 200 <= answer.status_code < 300:
                    return failed(f"the tool answered HTTP {answer.status_code}")
        except TargetRefused:
            return failed("the tool's URL (or a redirect) leads to an address papo may not reach")
        except (httpx.TimeoutException, TimeoutError):
            return failed(f"the tool did not answer within {tool.timeout_seconds} s")
        except httpx.HTTPError:
            return failed("the tool could not be reached")
        text = received.decode("utf-8", errors="replace")
        duration = round((time.monotonic() - started) * 1000, 1)
        return ToolResult(text[:RESULT_FOR_MODEL_CHARS], True, None, duration)


async def toolbox(
    db: AsyncSession, principal: Principal, assistant_id: uuid.UUID, keys: KeyBox, guard: NetGuard
) -> Toolbox:
    tools = await ToolService(db, principal, keys, guard).list(assistant_id)
    return Toolbox(tools, keys, guard)
