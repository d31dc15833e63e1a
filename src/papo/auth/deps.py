"""FastAPI dependencies: the request's transaction and the authenticated principal in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Protocol

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth import web_sessions
from papo.auth.invitations import Accounts
from papo.auth.service import Principal, authenticate
from papo.auth.tenant_cache import TenantCache
from papo.auth.tokens import SigningKey, TokenVerifier
from papo.db.engine import Database
from papo.errors import Unauthorized
from papo.ops.ratelimit import RateLimiter
from papo.runtime import current_runtime, running
from papo.settings import Settings

CLERK_SESSION_COOKIE = "__session"


class AuthRuntime(Protocol):
    """What identity needs from the running process (the app's wiring provides it)."""

    settings: Settings
    db: Database
    signing_key: SigningKey
    verifier: TokenVerifier
    csrf: web_sessions.CsrfGuard
    limiter: RateLimiter
    accounts: Accounts
    tenants: TenantCache

    @property
    def reads(self) -> Database: ...


async def request_tx(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back if it raises."""
    runtime: AuthRuntime = running(request)
    async with runtime.db.transaction() as session:
        yield session


# scope="function": commit before the response is sent, so a client never sees a 2xx for
# work that then fails to commit.
DbSession = Annotated[AsyncSession, Depends(request_tx, scope="function")]
Auth = Annotated[AuthRuntime, Depends(current_runtime)]


def bearer_credential(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized("send Authorization: Bearer <token or API key>")
    return credential.strip()


async def cookie_principal(request: Request, session: AsyncSession, state: AuthRuntime) -> Principal | None:
    """The browser's member: papo's own session cookie, else Clerk's `__session` token (verified
    like a bearer token). None when neither is there."""
    if cookie := request.cookies.get(web_sessions.SESSION_COOKIE):
        principal, web_session_id = await web_sessions.authenticate(session, cookie)
        request.state.web_session_id = web_session_id
        return principal
    if clerk_token := request.cookies.get(CLERK_SESSION_COOKIE):
        principal = await authenticate(session, state.verifier, clerk_token)
        request.state.provider_cookie = True
        return principal
    return None


async def current_principal(request: Request, session: DbSession, state: Auth) -> Principal:
    """A bearer token or API key; else the browser's session cookie (with CSRF on writes), so the
    web app's script calls the same API as everyone else."""
    if "authorization" not in request.headers and (principal := await cookie_principal(request, session, state)):
        if request.method not in web_sessions.SAFE_METHODS:
            state.csrf.check(
                request.cookies.get(web_sessions.CSRF_COOKIE), request.headers.get(web_sessions.CSRF_HEADER)
            )
    else:
        principal = await authenticate(session, state.verifier, bearer_credential(request))
    request.state.principal = principal
    return principal


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    principal.require_admin()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def read_tx(session: DbSession, principal: CurrentPrincipal, state: Auth) -> AsyncIterator[AsyncSession]:
    """A read-only transaction for the caller on the read replica (PAPO_READ_DATABASE_URL): history,
    search and exports. A replica may be a moment behind the primary. Without one, the request's own
    transaction."""
    if state.reads is state.db:
        yield session
        return
    async with state.reads.transaction(principal.context()) as replica:
        yield replica


ReadSession = Annotated[AsyncSession, Depends(read_tx, scope="function")]
AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
