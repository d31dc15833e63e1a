"""Tools an assistant may call, defined here and called while a reply is written (through the SDK's
function calling; see papo.assistants.replies): a tenant's HTTP endpoints, every tool of a tenant's
MCP server (papo.assistants.mcp) and papo's built-ins (papo.assistants.builtin_tools).

An HTTP call is a POST of JSON to the tool's URL, through the outbound guard (public addresses only,
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
import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from papo.assistants.builtin_tools import SPECS as BUILTIN_SPECS
from papo.assistants.builtin_tools import BuiltinTools
from papo.assistants.mcp import McpCatalog, McpServer, RemoteTool
from papo.assistants.models import AssistantTool
from papo.auth.service import Principal
from papo.crypto import KeyBox, new_signing_secret, signature_headers
from papo.db.base import new_id
from papo.db.engine import Database, rows_changed
from papo.errors import Conflict, InvalidInput, NotFound
from papo.netguard import NetGuard, TargetRefused
from papo.settings import Settings

log = structlog.get_logger(__name__)

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
    builtin = BUILTIN_SPECS.get(tool.name, {}) if tool.kind == "builtin" else {}
    return {
        "id": tool.id,
        "assistant_id": tool.assistant_id,
        "kind": tool.kind,
        "name": tool.name,
        "description": builtin.get("description", tool.description),
        "parameters": builtin.get("parameters", tool.parameters if tool.kind == "http" else {}),
        "url": tool.url,
        "has_authorization": tool.authorization_encrypted is not None,
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
        self.principal.require_manager("an assistant's tools")

    async def list(self, assistant_id: uuid.UUID) -> list[AssistantTool]:
        query = select(AssistantTool).where(
            AssistantTool.tenant_id == self.principal.tenant_id, AssistantTool.assistant_id == assistant_id
        )
        return list((await self.db.scalars(query.order_by(AssistantTool.name))).all())

    async def create(self, assistant_id: uuid.UUID, values: dict[str, Any]) -> tuple[AssistantTool, str | None]:
        """The new tool and, for an HTTP tool, its signing secret (shown this once)."""
        self._require_writer()
        values = dict(values)
        secret = None
        if values.get("url") is not None:
            await self._check_url(values["url"])
        if values["kind"] == "http":
            secret = new_signing_secret()
            values["secret_encrypted"] = self.keys.seal(secret)
        authorization = values.pop("authorization", None)
        if authorization is not None:
            values["authorization_encrypted"] = self.keys.seal(authorization)
        tool = AssistantTool(tenant_id=self.principal.tenant_id, id=new_id(), assistant_id=assistant_id, **values)
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
    """The enabled tools of one assistant, for one reply, by the function name the model calls."""

    def __init__(
        self,
        http: list[AssistantTool],
        remote: list[tuple[McpServer, RemoteTool]],
        builtins: BuiltinTools,
        builtin_names: list[str],
        keys: KeyBox,
        guard: NetGuard,
    ) -> None:
        self.http = {tool.name: tool for tool in http}
        self.remote = {tool.function_name: (server, tool) for server, tool in remote}
        self.builtins = builtins
        self.builtin_names = [name for name in builtin_names if builtins.offers(name)]
        self.keys = keys
        self.guard = guard

    def __bool__(self) -> bool:
        return bool(self.http or self.remote or self.builtin_names)

    def specs(self) -> list[dict[str, Any]]:
        """The tools as the OpenAI chat API takes them (function calling)."""
        functions = [(t.name, t.description, t.parameters) for t in self.http.values()]
        functions += [(t.function_name, t.description, t.parameters) for _, t in self.remote.values()]
        functions += [
            (name, BUILTIN_SPECS[name]["description"], BUILTIN_SPECS[name]["parameters"]) for name in self.builtin_names
        ]
        return [
            {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}
            for name, description, parameters in functions
        ]

    async def call(self, call: ToolCall, context: dict[str, str]) -> ToolResult:
        started = time.monotonic()

        def finished(content: str, error: str | None) -> ToolResult:
            duration = round((time.monotonic() - started) * 1000, 1)
            if error is not None:
                return ToolResult(
                    json.dumps({"error": error, "detail": content[:2000] or None}), False, error, duration
                )
            return ToolResult(content[:RESULT_FOR_MODEL_CHARS], True, None, duration)

        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            return finished("", "the arguments were not valid JSON")
        if not isinstance(arguments, dict):
            return finished("", "the arguments must be a JSON object")
        if call.name in self.http:
            return finished(*await self._post(self.http[call.name], call, arguments, context))
        if call.name in self.remote:
            server, tool = self.remote[call.name]
            return finished(*await server.call(tool.remote_name, arguments))
        if call.name in self.builtin_names:
            try:
                return finished(*await self.builtins.run(call.name, arguments))
            except Exception:  # papo's own tool failing must not cost the reply either
                log.exception("built-in tool failed", tool=call.name)
                return finished("", "the tool failed")
        return finished("", f"there is no tool named {call.name!r}")

    async def _post(
        self, tool: AssistantTool, call: ToolCall, arguments: dict[str, Any], context: dict[str, str]
    ) -> tuple[str, str | None]:
        assert tool.url is not None
        assert tool.secret_encrypted is not None
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
                        return "", f"the tool answered more than {MAX_RESULT_BYTES // 1024} KB"
                if not 200 <= answer.status_code < 300:
                    return "", f"the tool answered HTTP {answer.status_code}"
        except TargetRefused:
            return "", "the tool's URL (or a redirect) leads to an address papo may not reach"
        except (httpx.TimeoutException, TimeoutError):
            return "", f"the tool did not answer within {tool.timeout_seconds} s"
        except httpx.HTTPError:
            return "", "the tool could not be reached"
        return received.decode("utf-8", errors="replace"), None


async def toolbox(
    rows: list[AssistantTool],
    db: Database,
    principal: Principal,
    session_id: uuid.UUID,
    keys: KeyBox,
    guard: NetGuard,
    catalog: McpCatalog,
    settings: Settings,
) -> tuple[Toolbox, list[str]]:
    """The enabled tools among an assistant's `rows`, for a reply in `session_id`, and the MCP
    servers that could not be listed (their tools are left out this time)."""
    rows = [row for row in rows if row.enabled]
    servers = [McpServer(row, keys, guard) for row in rows if row.kind == "mcp"]
    listed = await asyncio.gather(*(catalog.tools(server) for server in servers), return_exceptions=True)
    remote: list[tuple[McpServer, RemoteTool]] = []
    unavailable: list[str] = []
    for server, tools in zip(servers, listed, strict=True):
        if isinstance(tools, BaseException):
            log.warning("MCP server unavailable", tool=server.row.name, error=str(tools))
            unavailable.append(server.row.name)
        else:
            remote += [(server, tool) for tool in tools]
    builtins = BuiltinTools(db, principal, settings, session_id)
    return (
        Toolbox(
            [row for row in rows if row.kind == "http"],
            remote,
            builtins,
            [row.name for row in rows if row.kind == "builtin"],
            keys,
            guard,
        ),
        unavailable,
    )
