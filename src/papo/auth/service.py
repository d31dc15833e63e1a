"""Identity rules: who a request is, built-in accounts, tenants, members and API keys."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.models import ADMIN_ROLES, STAFF_ROLES, ApiKey, Membership, Role, Tenant, User
from papo.auth.tokens import TokenVerifier
from papo.db.base import new_id
from papo.db.engine import RlsContext, apply_context, driver
from papo.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

API_KEY_PREFIX = "papo_sk_"
SERVICE_ROLE = "service"
_password_hasher = PasswordHasher()
# Verifying against this keeps a wrong e-mail as slow as a wrong password (no account probing).
_DUMMY_HASH = _password_hasher.hash(secrets.token_urlsafe(16))
AUTHENTICATE_API_KEY = "SELECT key_id, key_tenant_id FROM papo_authenticate_api_key($1)"
AUTHENTICATE_SUBJECT = (
    "SELECT subject_tenant_id, subject_user_id, subject_role "
    "FROM papo_authenticate_subject($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a member of one tenant, or a tenant API key (role "service")."""

    tenant_id: uuid.UUID
    user_id: str | None
    role: str
    api_key_id: uuid.UUID | None = None
    # When the credential stops being valid (token `exp`); None for API keys, checked per request.
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    def context(self) -> RlsContext:
        return RlsContext(self.tenant_id, self.user_id, self.role)

    def acting_as(self, user_id: str) -> Principal:
        """An API key acting for one member of its own tenant (RLS still pins the tenant)."""
        return Principal(self.tenant_id, user_id, self.role, self.api_key_id, self.expires_at)

    def require_user(self) -> str:
        if self.user_id is None:
            raise Forbidden("this endpoint acts for a signed-in user; API keys use /api/v1/chats")
        return self.user_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("tenant admins only")

    def require_staff(self, detail: str) -> None:
        """The company's staff (owners, admins, agents) and its API keys; members get `detail` (403)."""
        if not (self.role in STAFF_ROLES or self.is_service):
            raise Forbidden(detail)

    def require_manager(self, what: str) -> None:
        """Tenant admins and API keys manage a company's configuration (`what`: tools, teams, …)."""
        if not (self.is_admin or self.is_service):
            raise Forbidden(f"only tenant admins (and API keys) manage {what}")


def hash_api_key(key: str) -> str:
    # API keys carry 256 bits of randomness, so a fast hash is enough (no brute force possible).
    return hashlib.sha256(key.encode()).hexdigest()


async def authenticate(session: AsyncSession, verifier: TokenVerifier, credential: str) -> Principal:
    """Resolve a bearer credential and set the transaction's row-level-security context to it."""
    principal, _ = await authenticate_bearer(session, verifier, credential)
    return principal


async def authenticate_bearer(
    session: AsyncSession, verifier: TokenVerifier, credential: str, *, outside_only: bool = False
) -> tuple[Principal, uuid.UUID | None]:
    """Like `authenticate`, also naming the browser session a papo token was minted for (None for
    API keys and outside tokens). `outside_only`: only an identity provider's token (a provider's
    session cookie), never an API key or one of papo's own tokens, whose browser binding such a
    cookie would shed."""
    connection = driver(session)  # runs on every request: straight to asyncpg
    if outside_only and credential.startswith(API_KEY_PREFIX):
        raise Unauthorized("this cookie holds an identity provider's session token only")
    if credential.startswith(API_KEY_PREFIX):
        key = await connection.fetchrow(AUTHENTICATE_API_KEY, hash_api_key(credential))
        if key is None:
            raise Unauthorized("invalid or revoked API key")
        return Principal(key["key_tenant_id"], None, SERVICE_ROLE, key["key_id"]), None

    identity = await verifier.verify(credential)
    if outside_only and identity.issuer_is_papo:
        raise Unauthorized("this cookie holds an identity provider's session token only")
    external = not identity.issuer_is_papo
    subject = await connection.fetchrow(
        AUTHENTICATE_SUBJECT,
        identity.tenant_ref,
        external,
        identity.user_id,
        identity.email,
        identity.name,
        identity.role,
        external,  # provision tenants, users and memberships just in time for external issuers
        new_id(),
        identity.issuer if external else None,  # an outside subject is bound to its issuer
    )
    if subject is None:
        raise Unauthorized("no such member: the account or its membership no longer exists")
    if identity.web_session_id is not None and not await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM web_sessions WHERE id = $1 AND expires_at > now())", identity.web_session_id
    ):  # minted for a browser that has signed out since (or been signed out everywhere)
        raise Unauthorized("your session has ended; sign in again")
    principal = Principal(
        subject["subject_tenant_id"],
        subject["subject_user_id"],
        subject["subject_role"],
        expires_at=identity.expires_at,
    )
    return principal, identity.web_session_id


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _password_hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


async def login(session: AsyncSession, email: str, password: str, tenant_id: uuid.UUID | None) -> Principal:
    rows = (
        await session.execute(
            text(
                "SELECT login_user_id, login_password_hash, login_tenant_id, login_role "
                "FROM papo_login_candidates(:email)"
            ),
            {"email": email},
        )
    ).all()
    if not rows:
        await verify_password(_DUMMY_HASH, password)
        raise Unauthorized("wrong e-mail or password")
    if not await verify_password(rows[0].login_password_hash, password):
        raise Unauthorized("wrong e-mail or password")
    if tenant_id is not None:
        rows = [row for row in rows if row.login_tenant_id == tenant_id]
        if not rows:
            raise Unauthorized("wrong e-mail or password")
    elif len(rows) > 1:
        raise BadRequest("this account belongs to several tenants; pass tenant_id")
    row = rows[0]
    return Principal(row.login_tenant_id, row.login_user_id, row.login_role)


async def create_tenant(session: AsyncSession, name: str, external_id: str | None = None) -> Tenant:
    """Create a tenant. Switches the transaction's context to the new tenant as its owner."""
    tenant = Tenant(id=new_id(), name=name, external_id=external_id)
    await apply_context(session, RlsContext(tenant.id, None, Role.owner.value))
    session.add(tenant)
    await session.flush()
    return tenant


async def add_member(
    session: AsyncSession, *, email: str, name: str | None, password: str | None, role: Role | None
) -> tuple[str, bool]:
    """Add a NEW account to the context tenant; returns (user id, whether it was created). A member
    of this tenant keeps their account (the role is updated); an address that any other account
    uses is refused with Conflict: that person joins through an invitation, never by address."""
    password_hash = hash_password(password) if password else None
    connection = driver(session)
    await connection.execute("SAVEPOINT add_member")
    try:
        row = await connection.fetchrow(
            "SELECT member_user_id, member_created FROM papo_add_member($1, $2, $3, $4, $5)",
            str(new_id()),
            email,
            name,
            password_hash,
            role.value if role else None,
        )
    except asyncpg.UniqueViolationError as exc:
        await connection.execute("ROLLBACK TO SAVEPOINT add_member")
        raise Conflict("an account with this e-mail already exists; invite it to this tenant instead") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        await connection.execute("ROLLBACK TO SAVEPOINT add_member")
        raise Forbidden(str(exc.args[0]) if exc.args else "not allowed") from exc
    assert row is not None
    return str(row["member_user_id"]), bool(row["member_created"])


async def require_context_tenant(session: AsyncSession) -> None:
    """The tenant the transaction's context names exists (the operator's CLI names it by id)."""
    if not await driver(session).fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = papo_current_tenant())"):
        raise NotFound("no such tenant")


async def find_member(session: AsyncSession, user_id: str) -> Membership:
    membership = await session.scalar(select(Membership).where(Membership.user_id == user_id))
    if membership is None:
        raise NotFound("no such member in this tenant")
    return membership


async def find_member_by_email(session: AsyncSession, email: str) -> str:
    """The id of the tenant member with this e-mail (RLS limits users to the caller's tenant)."""
    rows = (
        await session.execute(
            select(User.id).join(Membership, Membership.user_id == User.id).where(User.email == email.lower())
        )
    ).all()
    if not rows:
        raise NotFound(f"no member of this tenant has the e-mail {email}")
    if len(rows) > 1:
        raise Conflict(f"several members share the e-mail {email}; address the user by id")
    return str(rows[0].id)


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


async def create_api_key(
    session: AsyncSession, tenant_id: uuid.UUID, name: str, created_by: str | None
) -> tuple[ApiKey, str]:
    """Returns the stored key and its plaintext, which is shown once and never stored."""
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant_id,
        id=new_id(),
        name=name,
        prefix=plaintext[: len(API_KEY_PREFIX) + 6],
        key_hash=hash_api_key(plaintext),
        created_by=created_by,
        created_at=datetime.now(UTC),
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(select(ApiKey).order_by(ApiKey.created_at.desc()))).all())


async def revoke_api_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    key: ApiKey | None = await session.scalar(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
        .returning(ApiKey)
    )
    if key is None:
        raise NotFound("no such API key")
    return key
