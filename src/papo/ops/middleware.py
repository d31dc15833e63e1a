"""ASGI middleware: request ids, access logs and HTTP metrics."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from papo.errors import problem
from papo.ops.alerts import record_server_error
from papo.ops.metrics import HTTP_LATENCY, HTTP_REQUESTS
from papo.ops.ratelimit import response_headers as rate_limit_headers

log = structlog.get_logger("papo.access")
UNMATCHED_ROUTE = "(unmatched)"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# On every response; pages add their Content-Security-Policy themselves (the API docs need CDN scripts).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"DENY"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class RouteTemplates:
    """The full path template of the route that answered ("/api/v1/whatsapp/sessions/{session_id}").

    The route FastAPI puts in the scope carries its path without the prefix it was included under,
    and one router may be included under several prefixes; so the application's route table is
    read once, and among a route's full templates the one whose fixed start the request's path
    has is taken."""

    def __init__(self) -> None:
        self.by_route: dict[int, list[str]] | None = None

    def label(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        if self.by_route is None:
            self.by_route = {}
            for context in iter_route_contexts(scope["app"].routes):
                if context.path:
                    self.by_route.setdefault(id(context.original_route), []).append(context.path)
        templates = self.by_route.get(id(route)) or [getattr(route, "path", UNMATCHED_ROUTE)]
        if len(templates) == 1:
            return templates[0]
        path = scope["path"]
        return max(templates, key=lambda t: path.startswith(t.split("{", 1)[0]) * len(t.split("{", 1)[0]))


class RequestContextMiddleware:
    """Gives every request an X-Request-ID (the caller's, if sane) and the security headers, logs
    one line per request (route template, status, latency, and the tenant and user once known),
    and counts it for /metrics.

    Paths that matched no route are counted under one label, so a scanner cannot grow the metric
    without bound; the log line keeps the real path."""

    def __init__(self, app: ASGIApp, *, metrics: bool = True, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                    *SECURITY_HEADERS,
                    *(rate_limit_headers(scope.get("state", {})) if status_code != 429 else ()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = self.templates.label(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            if status_code >= 500:
                record_server_error()
            if self.metrics:
                HTTP_REQUESTS.labels(method, route, str(status_code)).inc()
                HTTP_LATENCY.labels(method, route).observe(elapsed)
            principal = scope.get("state", {}).get("principal")
            if self.access_log:
                log.info(
                    "request",
                    method=method,
                    route=route,
                    path=scope["path"],
                    status=status_code,
                    ms=round(elapsed * 1000, 1),
                    tenant_id=str(principal.tenant_id) if principal else None,
                    user_id=principal.user_id if principal else None,
                    api_key_id=str(principal.api_key_id) if principal and principal.api_key_id else None,
                )
            structlog.contextvars.unbind_contextvars("request_id")


# Where a client uploads a file: its body may be as large as a file papo keeps (multipart overhead aside).
UPLOAD_PATH = re.compile(
    r"/api/v1/whatsapp/conversations/[0-9a-fA-F-]{36}/attachments|/api/v1/knowledge/collections/[0-9a-fA-F-]{36}/documents"
)
UPLOAD_OVERHEAD = 64 * 1024


class BodyLimitMiddleware:
    """Caps request bodies: a declared Content-Length over the limit is refused before reading,
    and a streamed (chunked) body is cut off once it passes the limit. Both answer 413 in the
    problem shape."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int = 0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = max(upload_max_bytes, max_bytes)  # file uploads (UPLOAD_PATH) only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_max_bytes if UPLOAD_PATH.fullmatch(scope.get("path", "")) else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await self._too_large(limit)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPExceptions met while reading the body, so the
                    # application's handler answers it like any other problem.
                    raise StarletteHTTPException(413, self._detail(limit))
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self, limit: int) -> str:
        return f"The request body exceeds {limit} bytes."

    def _too_large(self, limit: int) -> JSONResponse:
        return problem(413, "Payload too large", self._detail(limit), slug="payload-too-large")
