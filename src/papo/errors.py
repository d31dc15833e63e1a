"""Domain exceptions and their one wire shape: RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


class DomainError(Exception):
    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers


class BadRequest(DomainError):
    pass


class Unauthorized(DomainError):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="papo"'})


class Forbidden(DomainError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(DomainError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, slug, title = 409, "conflict", "Conflict"


class QuotaExceeded(DomainError):
    status, slug, title = 429, "quota-exceeded", "Quota exceeded"


class DatabaseUnavailable(DomainError):
    """The database cannot be reached right now (restarting, failing over, connections dropped):
    nothing was done, and the same request can be sent again shortly."""

    status, slug, title = 503, "database-unavailable", "Temporarily unavailable"

    def __init__(self) -> None:
        super().__init__("the database is unavailable for a moment; try again", headers={"Retry-After": "2"})


class Unavailable(DomainError):
    """Something outside papo (an SMTP server, a provider) failed; nothing was stored."""

    status, slug, title = 503, "unavailable", "Temporarily unavailable"


class PayloadTooLarge(DomainError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class FileTooLarge(DomainError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedFile(DomainError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidInput(DomainError):
    """Semantically invalid input found after schema validation (e.g. merged metadata too large)."""

    status, slug, title = 422, "validation-error", "Invalid input"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class NotModified(Exception):
    """The caller's copy is current: an empty 304 with these headers (ETag, Cache-Control)."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("not modified")
        self.headers = headers


# SQLSTATEs of input PostgreSQL cannot store: a NUL byte (22021), a \u0000 escape in JSON (22P05),
# text its type refuses, such as an unpaired surrogate escape in JSON (22P02).
_UNSTORABLE_SQLSTATES = frozenset({"22021", "22P05", "22P02"})


def causes(exc: BaseException, depth: int = 5) -> Iterator[BaseException]:
    """`exc` and what it wraps: a DBAPI error's driver error (`orig`), else its `__cause__`."""
    seen: BaseException | None = exc
    for _ in range(depth):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


def unstorable_text(exc: BaseException) -> bool:
    """Input text that no column can hold: NUL characters, or unpaired UTF-16 surrogates (which a
    JSON body may carry as escapes but UTF-8 cannot encode)."""
    return any(
        isinstance(seen, UnicodeEncodeError) or getattr(seen, "sqlstate", None) in _UNSTORABLE_SQLSTATES
        for seen in causes(exc)
    )


UNSTORABLE_TEXT = "The request contains text that cannot be stored (a NUL character or an unpaired surrogate)."


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": f"urn:papo:problem:{slug}", "title": title, "status": status, "detail": detail}
    # The same id as the X-Request-ID header and the log line: what a user quotes to support.
    if request_id := structlog.contextvars.get_contextvars().get("request_id"):
        body["request_id"] = request_id
    if errors is not None:
        body["errors"] = errors
    body.update(extensions or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        fields.append({"field": ".".join(location), "message": error.get("msg", ""), "type": error.get("type")})
    return fields


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return problem(400, "Malformed JSON", "The request body is not valid JSON.", slug="malformed-json")
    return problem(
        422,
        "Invalid input",
        "The request does not match the expected shape.",
        slug="validation-error",
        errors=_field_errors(exc),
    )


async def _domain_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    errors = None
    if isinstance(exc, InvalidInput) and exc.field:
        errors = [{"field": exc.field, "message": exc.detail, "type": exc.slug}]
    return problem(exc.status, exc.title, exc.detail, slug=exc.slug, errors=errors, headers=exc.headers)


async def _not_modified_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotModified)
    return Response(status_code=304, headers=exc.headers)


_HTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large", 415: "unsupported-media-type"}


async def http_problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    title = slug.replace("-", " ").capitalize()
    return problem(exc.status_code, title, str(exc.detail), slug=slug, headers=exc.headers)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    if unstorable_text(exc):  # outside a unit of work, which translates it itself (see papo.db.engine)
        return problem(422, "Invalid input", UNSTORABLE_TEXT, slug="validation-error")
    log.exception("unhandled error", path=request.url.path)
    return problem(500, "Internal error", "Something went wrong on our side; it has been logged.", slug="internal")


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: every error papo answers has this shape.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:papo:problem:not-found"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string", "description": "the X-Request-ID of the request (quote it to support)"},
        "errors": {
            "type": "array",
            "description": "field errors of a validation problem",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": ["string", "null"]},
                },
            },
        },
    },
}
PROBLEM_RESPONSE = {
    "description": "A problem (RFC 9457), e.g. invalid input, not found, not allowed, too many requests",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the one error shape on every operation, in place of FastAPI's own 422 body (which
    papo never sends)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = PROBLEM_RESPONSE
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    return schema


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(NotModified, _not_modified_handler)
    app.add_exception_handler(DomainError, _domain_handler)
    app.add_exception_handler(StarletteHTTPException, http_problem_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
