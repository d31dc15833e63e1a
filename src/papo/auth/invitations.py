"""How a person joins a tenant: invitations bound to an e-mail address, and proof of that address.

Nothing here ties an account to a tenant because an address is equal to one stored: adding a
person creates an invitation (a one-time, expiring token for tenant + address + role), and the
membership exists only once someone holding the token accepts it. An existing account accepts with
its own password as well; a token that reached the mailbox (sent by e-mail, or printed for the
operator) may also reset that account's password, like any "forgot password" link. A token shown to
a tenant admin because no SMTP server is configured proves nothing about the address: it verifies
nothing and cannot take over an account. Migration 0020 holds the rules in SQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import jwt
import structlog
from sqlalchemy import Text, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.models import Invitation, Role, Tenant
from papo.auth.service import Principal, hash_password, verify_password
from papo.auth.web_sessions import token_hash
from papo.db.base import new_id
from papo.db.engine import apply_context, driver, rows_changed
from papo.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized, Unavailable
from papo.mail import Mailer
from papo.settings import Settings

log = structlog.get_logger(__name__)

INVITATION_PATH = "/invitations/"
VERIFY_PATH = "/verify-email"
VERIFY_AUDIENCE = "papo:verify-email"
MIN_PASSWORD_CHARS = 10
ADDRESS_FORBIDDEN = frozenset(',;:"<>()[]\\')


@dataclass(frozen=True)
class CreatedInvitation:
    id: uuid.UUID
    email: str
    role: Role
    user_id: str
    expires_at: datetime
    emailed: bool
    # The link itself, only when it was not e-mailed (the operator's CLI, or no SMTP configured).
    url: str | None


@dataclass(frozen=True)
class InvitationView:
    """What the acceptance page shows to whoever holds the link."""

    tenant_id: uuid.UUID
    tenant_name: str
    email: str
    role: str
    state: str  # pending | accepted | expired | revoked
    proves_email: bool
    account_exists: bool
    account_verified: bool
    account_id: str | None
    account_password_hash: str | None


@dataclass(frozen=True)
class PendingInvitation:
    id: uuid.UUID
    email: str
    role: str
    user_id: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime


class Accounts:
    """Invitations and e-mail proof; holds what they need from the process (settings, SMTP, key)."""

    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.settings = settings
        self.mailer = Mailer(settings)
        # its own key, derived from the server key: an address check is not any other token
        self.verify_key = hashlib.sha256(b"papo-verify-email\x00" + secret).digest()

    def link(self, path: str) -> str:
        return self.settings.issuer + path

    # ---- invitations ---------------------------------------------------------------------------

    async def invite(
        self,
        session: AsyncSession,
        principal: Principal,
        email: str,
        role: Role,
        *,
        by_operator: bool = False,
    ) -> CreatedInvitation:
        """Invite `email` to the principal's tenant (admins, owners and API keys). The link goes by
        e-mail when SMTP is configured; the operator's CLI gets it printed instead."""
        email = normalise_email(email)
        token = secrets.token_urlsafe(32)
        send_mail = self.mailer.configured and not by_operator
        connection = driver(session)
        await connection.execute("SAVEPOINT invite")
        try:
            row = await connection.fetchrow(
                "SELECT * FROM papo_invite($1, $2, $3, $4, $5, $6, $7, $8)",
                new_id(),
                str(new_id()),
                email,
                role.value,
                token_hash(token),
                send_mail or by_operator,
                timedelta(hours=self.settings.invitation_ttl_hours),
                principal.user_id,
            )
        except asyncpg.UniqueViolationError as exc:
            await connection.execute("ROLLBACK TO SAVEPOINT invite")
            raise Conflict(f"{email} is already a member of this workspace") from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            await connection.execute("ROLLBACK TO SAVEPOINT invite")
            raise Forbidden(str(exc.args[0]) if exc.args else "not allowed") from exc
        url = self.link(INVITATION_PATH + token)
        if send_mail:
            tenant_name = await session.scalar(select(Tenant.name).where(Tenant.id == principal.tenant_id))
            try:
                await self.mailer.send(
                    [email],
                    f"Convite para {tenant_name} · Invitation to {tenant_name}",
                    f"Você foi convidado(a) para {tenant_name} no papo. Para aceitar, abra:\n"
                    f"You have been invited to {tenant_name} on papo. To accept, open:\n\n{url}\n\n"
                    f"O link vale por {self.settings.invitation_ttl_hours} h. "
                    f"The link is valid for {self.settings.invitation_ttl_hours} h.\n",
                )
            except Exception as exc:  # SMTP failures of every kind: the invitation is not created
                log.warning("invitation e-mail failed", error=type(exc).__name__)
                raise Unavailable("the invitation e-mail could not be sent; try again later") from exc
        return CreatedInvitation(
            id=row["invitation_id"],
            email=email,
            role=role,
            user_id=row["invitation_user_id"],
            expires_at=row["invitation_expires_at"],
            emailed=send_mail,
            url=None if send_mail else url,
        )

    @staticmethod
    async def pending(session: AsyncSession, principal: Principal) -> list[PendingInvitation]:
        _require_admin_or_key(principal)
        rows = await session.execute(
            select(
                Invitation.id,
                Invitation.email,
                Invitation.role.cast(Text).label("role"),
                Invitation.user_id,
                Invitation.invited_by,
                Invitation.created_at,
                Invitation.expires_at,
            )
            .where(
                Invitation.tenant_id == principal.tenant_id,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
            )
            .order_by(Invitation.created_at.desc())
        )
        return [PendingInvitation(**row) for row in rows.mappings()]

    @staticmethod
    async def revoke(session: AsyncSession, principal: Principal, invitation_id: uuid.UUID) -> None:
        _require_admin_or_key(principal)
        revoked = await rows_changed(
            session,
            update(Invitation)
            .where(
                Invitation.tenant_id == principal.tenant_id,
                Invitation.id == invitation_id,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
            )
            .values(revoked_at=func.now()),
        )
        if revoked == 0:
            raise NotFound("no such pending invitation")

    @staticmethod
    async def view(session: AsyncSession, token: str) -> InvitationView:
        row = await driver(session).fetchrow("SELECT * FROM papo_invitation($1)", token_hash(token))
        if row is None:
            raise NotFound("this invitation link is not valid")
        return InvitationView(
            tenant_id=row["inv_tenant_id"],
            tenant_name=row["inv_tenant_name"],
            email=row["inv_email"],
            role=row["inv_role"],
            state=row["inv_state"],
            proves_email=row["inv_proves_email"],
            account_exists=row["inv_account_id"] is not None,
            account_verified=row["inv_account_verified"],
            account_id=row["inv_account_id"],
            account_password_hash=row["inv_account_password_hash"],
        )

    async def accept(
        self,
        session: AsyncSession,
        token: str,
        view: InvitationView,
        *,
        password: str,
        name: str | None,
        reset: bool,
    ) -> Principal:
        """Accept with a new account's password, the existing account's password, or (`reset`,
        only for a link that reached the mailbox) a new password for the existing account. `view` is
        what `view(token)` showed the caller (who needed its address for the sign-in throttle); the
        acceptance itself re-checks everything under the invitation's row lock."""
        if view.state != "pending":
            raise Unauthorized(f"this invitation is {view.state}; ask for a new one")
        account: str | None = None
        new_hash: str | None = None
        if view.account_id is None or reset:
            if view.account_id is not None and not view.proves_email:
                raise Forbidden("this link cannot reset a password; sign in with the account's password")
            check_new_password(password)
            new_hash = await asyncio.to_thread(hash_password, password)
        else:
            if not view.account_password_hash or not await verify_password(view.account_password_hash, password):
                raise Unauthorized("wrong password for the account with this e-mail")
            account = view.account_id
        connection = driver(session)
        await connection.execute("SAVEPOINT accept")
        try:
            row = await connection.fetchrow(
                "SELECT * FROM papo_accept_invitation($1, $2, $3, $4)",
                token_hash(token),
                account,
                new_hash,
                (name or "").strip()[:200] or None,
            )
        except asyncpg.PostgresError as exc:
            await connection.execute("ROLLBACK TO SAVEPOINT accept")
            if isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
                raise Forbidden("confirm this account's e-mail address before joining another workspace") from exc
            if isinstance(exc, asyncpg.UniqueViolationError):
                raise Conflict("an account with this e-mail exists; sign in with its password") from exc
            if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
                raise Unauthorized("this invitation is no longer valid; ask for a new one") from exc
            raise
        principal = Principal(row["accepted_tenant_id"], row["accepted_user_id"], row["accepted_role"])
        await apply_context(session, principal.context())
        return principal

    # ---- proof of a self-signed-up address ------------------------------------------------------

    def verification_token(self, user_id: str, email: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id,
            "email": email,
            "aud": VERIFY_AUDIENCE,
            "iat": now,
            "exp": now + self.settings.invitation_ttl_hours * 3600,
        }
        return jwt.encode(claims, self.verify_key, algorithm="HS256")

    async def send_verification(self, user_id: str, email: str) -> bool:
        """E-mail the address check to a new self-signed-up account; False when SMTP is not set up."""
        if not self.mailer.configured:
            return False
        url = self.link(f"{VERIFY_PATH}?token={self.verification_token(user_id, email)}")
        try:
            await self.mailer.send(
                [email],
                "Confirme seu e-mail · Confirm your e-mail",
                f"Para confirmar este endereço no papo, abra:\nTo confirm this address on papo, open:\n\n{url}\n",
            )
        except Exception as exc:  # the account exists either way; the member can ask again
            log.warning("verification e-mail failed", error=type(exc).__name__)
            return False
        return True

    async def verify_email(self, session: AsyncSession, token: str, signed_in_user: str | None) -> None:
        """Mark the address proven. The confirming browser must be signed in as the account: the
        person who owns the mailbox must never confirm an account someone else created with it."""
        try:
            claims = jwt.decode(token, self.verify_key, algorithms=["HS256"], audience=VERIFY_AUDIENCE)
        except jwt.PyJWTError as exc:
            raise BadRequest("this confirmation link is not valid or has expired") from exc
        if signed_in_user is None or str(claims.get("sub")) != signed_in_user:
            raise Forbidden("sign in with the account this link was sent for, then open the link again")
        if not await driver(session).fetchval(
            "SELECT papo_mark_email_verified($1, $2)", str(claims.get("sub")), str(claims.get("email"))
        ):
            raise BadRequest("this confirmation link no longer matches the account")


async def pending_invitee(session: AsyncSession, email: str) -> str | None:
    """The account a pending invitation of the context tenant holds for this address (chats opened
    for the invitee belong to it until they accept); None without one."""
    user_id: str | None = await session.scalar(
        select(Invitation.user_id).where(
            Invitation.tenant_id == func.papo_current_tenant(),
            Invitation.email == func.lower(email.strip()),
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > func.now(),
        )
    )
    return user_id


def _require_admin_or_key(principal: Principal) -> None:
    if not principal.is_service:
        principal.require_admin()


def normalise_email(email: str) -> str:
    """One plain address (no display name, list, quoting or comment): it names the one mailbox an
    invitation may go to, and it is put in an e-mail header."""
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if (
        not local
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or len(email) > 320
        or any(c.isspace() or c in ADDRESS_FORBIDDEN or ord(c) < 32 for c in email)
        or email.count("@") != 1
    ):
        raise BadRequest("not an e-mail address")
    return email


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"choose a password of at least {MIN_PASSWORD_CHARS} characters")
