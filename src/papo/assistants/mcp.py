"""Tools from a tenant's MCP server: the official `mcp` SDK over streamable HTTP, through the
outbound guard (public addresses only, every connection checked, every answer capped).

An assistant's `mcp` tool row names a server; at the start of a reply papo lists the server's tools
(kept for CATALOG_SECONDS, so a chat does not list them before every answer) and offers each to the
model as `<row name>__<tool name>`. A call opens a session, calls the tool and closes it: a reply
calls few tools, and a session kept open between replies would be state to lose. A server that
cannot be listed offers nothing this time (the reply goes on without it); a call that fails is an
error result the model answers around, like any other tool."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from papo.assistants.models import AssistantTool
from papo.crypto import KeyBox
from papo.netguard import NetGuard, ResponseTooLarge, TargetRefused

log = structlog.get_logger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024  # any one answer of the server, listing included
MAX_SCHEMA_CHARS = 16_000
MAX_TOOLS_PER_SERVER = 64
CATALOG_SECONDS = 60.0
_NOT_A_NAME_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")


class McpUnavailable(Exception):
    """The server could not be reached, refused us, or did not answer in time."""


@dataclass(frozen=True)
class RemoteTool:
    function_name: str  # what the model calls: <row name>__<tool name>
    remote_name: str
    description: str
    parameters: dict[str, Any]


def function_name(prefix: str, remote_name: str) -> str:
    return f"{prefix}__{_NOT_A_NAME_CHARACTER.sub('_', remote_name)}"[:64]


def result_text(result: CallToolResult) -> str:
    """What the model reads: the text parts (other parts named), or the structured content as JSON
    when there is no text (the spec asks servers to send structured results as text too)."""
    parts = [part.text if isinstance(part, TextContent) else f"[{part.type}]" for part in result.content]
    if not any(isinstance(part, TextContent) for part in result.content) and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


class McpServer:
    """One tenant MCP server (one `mcp` tool row)."""

    def __init__(self, row: AssistantTool, keys: KeyBox, guard: NetGuard) -> None:
        assert row.url is not None
        self.row = row
        self.url = row.url
        self.timeout = float(row.timeout_seconds)
        self.authorization = keys.open(row.authorization_encrypted) if row.authorization_encrypted else None
        self.guard = guard

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        headers = {"user-agent": "papo-mcp/1"}
        if self.authorization:
            headers["authorization"] = self.authorization
        async with (
            self.guard.client2(max_response_bytes=MAX_RESPONSE_BYTES, headers=headers, timeout=self.timeout) as http,
            Client(
                streamable_http_client(self.url, http_client=http), read_timeout_seconds=self.timeout, cache=None
            ) as client,
        ):
            yield client

    async def list_tools(self) -> list[RemoteTool]:
        tools: list[RemoteTool] = []
        try:
            async with asyncio.timeout(self.timeout), self._session() as client:
                cursor: str | None = None
                while len(tools) < MAX_TOOLS_PER_SERVER:
                    listed = await client.list_tools(cursor=cursor)
                    tools += [self._offer(tool.name, tool.description, tool.input_schema) for tool in listed.tools]
                    cursor = listed.next_cursor
                    if not cursor:
                        break
        except Exception as exc:  # a tenant's server may fail in any way; the reply goes on
            raise McpUnavailable(_reason(exc)) from exc
        return [tool for tool in tools if tool.parameters][:MAX_TOOLS_PER_SERVER]

    def _offer(self, name: str, description: str | None, schema: dict[str, Any]) -> RemoteTool:
        fits = schema.get("type") == "object" and len(json.dumps(schema)) <= MAX_SCHEMA_CHARS
        return RemoteTool(function_name(self.row.name, name), name, (description or "")[:2000], schema if fits else {})

    async def call(self, remote_name: str, arguments: dict[str, Any]) -> tuple[str, str | None]:
        """The tool's answer and, when it failed, why."""
        try:
            async with asyncio.timeout(self.timeout), self._session() as client:
                result = await client.call_tool(remote_name, arguments)
        except TimeoutError:
            return "", f"the MCP server did not answer within {self.row.timeout_seconds} s"
        except Exception as exc:  # as above
            return "", _reason(exc)
        text = result_text(result)
        return text, ("the MCP tool reported an error" if result.is_error else None)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it groups and what caused it, depth first."""
    found = [exc]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += _causes(inner)
    if exc.__cause__ is not None:
        found += _causes(exc.__cause__)
    return found


def _reason(exc: BaseException) -> str:
    """A short, safe description of why talking to the server failed (no internals, no secrets)."""
    causes = _causes(exc)
    if any(isinstance(cause, TargetRefused) for cause in causes):
        return "the MCP server's URL leads to an address papo may not reach"
    if any(isinstance(cause, ResponseTooLarge) for cause in causes):
        return f"the MCP server answered more than {MAX_RESPONSE_BYTES // 1024} KB"
    if any(isinstance(cause, TimeoutError) for cause in causes):
        return "the MCP server did not answer in time"
    leaf = next((cause for cause in causes if not isinstance(cause, BaseExceptionGroup)), exc)
    return f"the MCP server could not be used ({type(leaf).__name__})"


class McpCatalog:
    """Each server's tool list, kept for CATALOG_SECONDS (keyed by the row and its last change)."""

    def __init__(self) -> None:
        self._lists: dict[tuple[uuid.UUID, uuid.UUID, float], tuple[float, list[RemoteTool]]] = {}

    async def tools(self, server: McpServer) -> list[RemoteTool]:
        row = server.row
        key = (row.tenant_id, row.id, row.updated_at.timestamp())
        kept = self._lists.get(key)
        now = time.monotonic()
        if kept is not None and kept[0] > now:
            return kept[1]
        listed = await server.list_tools()
        self._lists = {k: v for k, v in self._lists.items() if v[0] > now}
        self._lists[key] = (now + CATALOG_SECONDS, listed)
        return listed
