"""A company's MCP server, built with the official SDK's server side and served over real HTTP
(streamable HTTP at /mcp), that only answers a caller with the right bearer token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

MCP_TOKEN = "Bearer mcp-token-for-tests"
HUGE_CHARACTERS = 2 * 1024 * 1024


def company_server() -> MCPServer:
    server = MCPServer("Loja")

    @server.tool(description="Estoque de um produto")
    def stock(query: str) -> str:
        return json.dumps({"sku": "CAM-01", "in_stock": 7, "asked": query})

    @server.tool(description="Sempre falha")
    def broken(query: str) -> str:
        raise ToolError("estoque fora do ar")

    @server.tool(description="Responde demais")
    def huge(query: str) -> str:
        return "x" * HUGE_CHARACTERS

    @server.tool(description="Demora")
    async def slow(query: str) -> str:
        await asyncio.sleep(5)
        return "tarde demais"

    return server


def bearer_only(app: Any) -> Any:
    """Refuses HTTP requests without the token (lifespan and the rest pass through)."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != MCP_TOKEN.encode():
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


@asynccontextmanager
async def serving_company_mcp() -> AsyncIterator[str]:
    """The server on a free port; yields its endpoint URL."""
    app = bearer_only(company_server().streamable_http_app())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task
