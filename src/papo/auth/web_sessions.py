"""Browser sessions: an opaque token in an HttpOnly cookie, its hash in `web_sessions`, and CSRF.

CSRF: every browser gets a random `papo_csrf` cookie (HttpOnly, SameSite=Strict); pages carry
HMAC(server key, that cookie) in a meta tag and hidden form fields, and every state-changing
request made with cookies must send it back (form field or `X-CSRF-Token` header). A page on
another site can neither read the cookie nor compute the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.models import WebSession
from papo.auth.service import Principal, hash_password
from papo.db.base import new_id
from papo.db.engine import RlsContext, apply_context, driver, rows_changed
from papo.errors import Conflict, Forbidden, Unauthorized

SESSION_COOKIE = "papo_session"
CSRF_COOKIE = "papo_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class PublicTenant:
    id: uuid.UUID
    name: str
    brand: dict[str, str]
    signup_open: bool


class CsrfGuard:
    def __init__(self, secret: bytes) -> None:
        self.key = hashlib.sha256(b"papo-csrf\x00" + secret).digest()

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    def token_for(self, cookie: str) -> str:
        return hmac.new(self.key, cookie.encode(), hashlib.sha256).hexdigest()

    def check(self, cookie: str | None, sent: str | None) -> None:
        if not cookie or not sent or not hmac.compare_digest(self.token_for(cookie), sent):
            raise Forbidden("missing or wrong CSRF token; reload the page and try again")


async def start(
    session: AsyncSession, principal: Principal, *, ttl_seconds: int, user_agent: str | None
) -> tuple[str, datetime]:
    """A new browser session for `principal`; returns the cookie value (shown once) and its expiry."""
    assert principal.user_id is not None
    await apply_context(session, principal.context())
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    await session.execute(
        insert(WebSession).values(
            tenant_id=principal.tenant_id,
            id=new_id(),
            user_id=principal.user_id,
            token_hash=token_hash(token),
            user_agent=(user_agent or "")[:300] or None,
            expires_at=expires_at,
        )
    )
    return token, expires_at


async def authenticate(session: AsyncSession, token: str) -> tuple[Principal, uuid.UUID]:
    """The member behind a session cookie (and the transaction's RLS context set to them)."""
    row = await driver(session).fetchrow("SELECT * FROM papo_authenticate_web_session($1)", token_hash(token))
    if row is None:
        raise Unauthorized("your session has ended; sign in again")
    principal = Principal(
        row["web_tenant_id"], row["web_user_id"], row["web_role"], expires_at=row["web_expires_at"].timestamp()
    )
    await apply_context(session, principal.context())
    return principal, row["web_session_id"]


async def end(session: AsyncSession, token: str) -> None:
    """Sign this browser out (the context must be the session's member)."""
    await session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))


async def end_all(session: AsyncSession, principal: Principal) -> int:
    """Sign the member out of every browser (RLS keeps it to their own sessions)."""
    return await rows_changed(
        session,
        delete(WebSession).where(WebSession.tenant_id == principal.tenant_id, WebSession.user_id == principal.user_id),
    )


async def public_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> PublicTenant | None:
    row = await driver(session).fetchrow("SELECT * FROM papo_public_tenant($1)", tenant_id)
    if row is None:
        return None
    brand = row["public_brand"] if isinstance(row["public_brand"], dict) else {}
    return PublicTenant(tenant_id, row["public_name"], brand, bool(row["public_signup_open"]))


async def sign_up(
    session: AsyncSession, tenant_id: uuid.UUID, *, email: str, name: str | None, password: str
) -> Principal:
    """Join a tenant that allows self sign-up, as a member with a password."""
    user_id = str(new_id())
    password_hash = await asyncio.to_thread(hash_password, password)
    connection = driver(session)
    # a savepoint, so the page that explains a refusal can still read (the brand) in this transaction
    await connection.execute("SAVEPOINT sign_up")
    try:
        await connection.fetchval(
            "SELECT papo_sign_up($1, $2, $3, $4, $5)", tenant_id, user_id, email, name, password_hash
        )
    except (asyncpg.UniqueViolationError, asyncpg.InsufficientPrivilegeError) as exc:
        await connection.execute("ROLLBACK TO SAVEPOINT sign_up")
        if isinstance(exc, asyncpg.UniqueViolationError):
            raise Conflict("an account with this e-mail already exists; sign in instead") from exc
        raise Forbidden("this workspace does not accept new accounts; ask an admin for an invitation") from exc
    principal = Principal(tenant_id, user_id, "member")
    await apply_context(session, RlsContext(tenant_id, user_id, "member"))
    return principal
