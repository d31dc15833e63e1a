"""FastAPI dependencies: the request's transaction and the authenticated principal in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth import web_sessions
from papo.auth.invitations import Accounts
from papo.auth.principal_cache import Credential, PrincipalCache, Recalled
from papo.auth.service import Principal, authenticate_bearer
from papo.auth.tenant_cache import TenantCache
from papo.auth.tokens import SigningKey, TokenVerifier
from papo.db.engine import RESUMPTION_REFUSED, Database
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
    principals: PrincipalCache

    @property
    def reads(self) -> Database: ...


async def request_tx(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, rolled back if it raises."""
    async with request_unit(request, authenticates=_authenticates(request)) as session:
        yield session


@asynccontextmanager
async def authenticated_unit(request: Request) -> AsyncIterator[tuple[AsyncSession, Principal]]:
    """What DbSession and CurrentPrincipal give, for a handler that opens them itself because one of
    its paths needs neither (papo.chat.api.send_message)."""
    async with request_unit(request, authenticates=True) as session:
        yield session, await current_principal(request, session)


@asynccontextmanager
async def request_unit(request: Request, *, authenticates: bool) -> AsyncIterator[AsyncSession]:
    """The request's unit of work. When the request authenticates, a credential this process has
    just seen opens it already scoped, once the database has confirmed it still holds (see
    papo.auth.principal_cache)."""
    runtime: AuthRuntime = running(request)
    credential = presented_credential(request) if authenticates else None
    recalled = runtime.principals.recall(credential)
    async with runtime.db.transaction(None if recalled is None else recalled.resumption()) as session:
        if recalled is not None and credential is not None:
            if session.info[RESUMPTION_REFUSED]:
                runtime.principals.refused(credential)
            else:
                request.state.recalled = recalled
        yield session


# scope="function": commit before the response is sent, so a client never sees a 2xx for
# work that then fails to commit.
DbSession = Annotated[AsyncSession, Depends(request_tx, scope="function")]
Auth = Annotated[AuthRuntime, Depends(current_runtime)]


def presented_credential(request: Request) -> Credential | None:
    """The credential `current_principal` will check: the Authorization header, else papo's session
    cookie, else Clerk's."""
    if "authorization" in request.headers:
        scheme, _, secret = request.headers["authorization"].partition(" ")
        return Credential("bearer", secret.strip()) if scheme.lower() == "bearer" and secret.strip() else None
    if cookie := request.cookies.get(web_sessions.SESSION_COOKIE):
        return Credential("web", cookie)
    if clerk_token := request.cookies.get(CLERK_SESSION_COOKIE):
        return Credential("clerk", clerk_token)
    return None


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
        principal, _ = await authenticate_bearer(session, state.verifier, clerk_token, outside_only=True)
        request.state.provider_cookie = True
        return principal
    return None


async def current_principal(request: Request, session: DbSession) -> Principal:
    """A bearer token or API key; else the browser's session cookie (with CSRF on writes), so the
    web app's script calls the same API as everyone else."""
    # Not a dependency of its own: FastAPI solves a dependency's dependencies again wherever it
    # appears, cached or not, and this one appears several times under most routes.
    state: AuthRuntime = running(request)
    credential = presented_credential(request)
    recalled: Recalled | None = getattr(request.state, "recalled", None)
    if recalled is None:
        if credential is not None and credential.kind != "bearer":
            if (principal := await cookie_principal(request, session, state)) is None:
                raise Unauthorized("sign in again")  # not reached: the cookie was there a moment ago
            browser = getattr(request.state, "web_session_id", None)
        else:
            principal, browser = await authenticate_bearer(session, state.verifier, bearer_credential(request))
        if credential is not None:
            state.principals.remember(session, credential, Recalled(principal, browser))
    else:
        principal = recalled.principal
        if credential is not None and credential.kind == "web":
            request.state.web_session_id = recalled.web_session_id
        elif credential is not None and credential.kind == "clerk":
            request.state.provider_cookie = True
    if credential is not None and credential.kind != "bearer" and request.method not in web_sessions.SAFE_METHODS:
        state.csrf.check(request.cookies.get(web_sessions.CSRF_COOKIE), request.headers.get(web_sessions.CSRF_HEADER))
    request.state.principal = principal
    return principal


def _authenticates(request: Request) -> bool:
    """Whether the matched route depends on `current_principal` (anywhere in its dependencies):
    only those may have their transaction scoped before the handler asks who the caller is."""
    dependant: Dependant | None = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return False
    known = _ROUTES_THAT_AUTHENTICATE.get(id(dependant))
    if known is None or known[0] is not dependant:
        known = _ROUTES_THAT_AUTHENTICATE[id(dependant)] = (dependant, _depends_on(dependant, current_principal))
    return known[1]


# by the route's Dependant (unhashable); the entry holds it, so its id cannot be reused meanwhile
_ROUTES_THAT_AUTHENTICATE: dict[int, tuple[Dependant, bool]] = {}


def _depends_on(dependant: Dependant, call: object) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


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
