"""Sign-in with Google or any OpenID Connect provider (authorization code + PKCE, through authlib).

The pending sign-in (state, nonce, PKCE verifier, where to go after) travels in a short-lived
cookie sealed with the server key, so any server process can finish what another started. The ID
token is verified against the provider's JWKS (issuer, audience, expiry, nonce); its e-mail must be
verified by the provider. The member is found by the (issuer, subject) linked before, else — once,
then linked — by that e-mail among accounts whose address papo has seen verified; or joins a tenant
that allows sign-up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import jwt
from authlib.integrations.httpx_client import AsyncOAuth2Client
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.auth.tokens import RemoteKeySet
from papo.db.base import new_id
from papo.db.engine import apply_context, driver
from papo.errors import BadRequest, Forbidden, Unauthorized
from papo.settings import Settings

PENDING_COOKIE = "papo_oidc"
PENDING_SECONDS = 600
GOOGLE_ISSUER = "https://accounts.google.com"


@dataclass(frozen=True)
class Provider:
    key: str
    label: str
    issuer: str
    client_id: str
    client_secret: str


def configured_providers(settings: Settings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    if settings.google_client_id and settings.google_client_secret:
        providers["google"] = Provider(
            "google", "Google", GOOGLE_ISSUER, settings.google_client_id, settings.google_client_secret
        )
    if settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret:
        providers["oidc"] = Provider(
            "oidc",
            settings.oidc_label,
            settings.oidc_issuer.rstrip("/"),
            settings.oidc_client_id,
            settings.oidc_client_secret,
        )
    return providers


@dataclass(frozen=True)
class Pending:
    provider: str
    state: str
    nonce: str
    verifier: str
    tenant: str | None
    next: str
    expires: float


@dataclass(frozen=True)
class VerifiedIdentity:
    issuer: str
    subject: str
    email: str
    name: str | None


class OidcClients:
    """Discovery documents and key sets per issuer, cached for the process."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, secret: bytes) -> None:
        self.http = http
        self.settings = settings
        # a key of its own, derived from the server key: pending sign-ins are not provider keys
        self.sealer = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"papo-oidc\x00" + secret).digest()))
        self.discovery: dict[str, dict[str, Any]] = {}
        self.key_sets: dict[str, RemoteKeySet] = {}

    async def metadata(self, provider: Provider) -> dict[str, Any]:
        if provider.issuer not in self.discovery:
            try:
                response = await self.http.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=5.0)
                response.raise_for_status()
                document: dict[str, Any] = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise BadRequest(f"{provider.label} sign-in is unavailable right now; try again later") from exc
            self.discovery[provider.issuer] = document
        return self.discovery[provider.issuer]

    def _client(self, provider: Provider, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            provider.client_id,
            provider.client_secret,
            scope="openid email profile",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )

    async def start(
        self, provider: Provider, redirect_uri: str, tenant: uuid.UUID | None, next_path: str
    ) -> tuple[str, str]:
        """The provider's authorization URL and the sealed pending sign-in for the cookie."""
        metadata = await self.metadata(provider)
        pending = Pending(
            provider=provider.key,
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            tenant=str(tenant) if tenant else None,
            next=next_path,
            expires=time.time() + PENDING_SECONDS,
        )
        async with self._client(provider, redirect_uri) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=pending.state,
                code_verifier=pending.verifier,
                nonce=pending.nonce,
            )
        return url, self.sealer.encrypt(json.dumps(vars(pending)).encode()).decode()

    def open_pending(self, sealed: str | None, state: str | None) -> Pending:
        try:
            pending = Pending(**json.loads(self.sealer.decrypt((sealed or "").encode())))
        except (InvalidToken, ValueError, TypeError) as exc:
            raise Unauthorized("this sign-in link has expired; start again") from exc
        if pending.expires < time.time() or not state or not secrets.compare_digest(pending.state, state):
            raise Unauthorized("this sign-in link has expired; start again")
        return pending

    async def finish(self, provider: Provider, pending: Pending, code: str, redirect_uri: str) -> VerifiedIdentity:
        metadata = await self.metadata(provider)
        async with self._client(provider, redirect_uri) as client:
            try:
                token = await client.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=pending.verifier, state=pending.state
                )
            except Exception as exc:  # authlib raises its own and httpx errors; all mean "no"
                raise Unauthorized(f"{provider.label} did not confirm the sign-in") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthorized(f"{provider.label} sent no ID token")
        keys = self.key_sets.setdefault(
            provider.issuer, RemoteKeySet(metadata["jwks_uri"], self.settings.auth_jwks_cache_seconds, self.http)
        )
        try:
            header = jwt.get_unverified_header(id_token)
            key = await keys.get(header.get("kid"))
            claims = jwt.decode(
                id_token,
                key,
                algorithms=["RS256", "ES256", "PS256"],
                audience=provider.client_id,
                issuer=metadata.get("issuer", provider.issuer),
                leeway=self.settings.auth_leeway_seconds,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the ID token from {provider.label} is not valid: {exc}") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), pending.nonce):
            raise Unauthorized("the sign-in answer does not match this browser's request")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is not True:
            raise Forbidden(f"{provider.label} did not vouch for an e-mail address on this account")
        name = claims.get("name") if isinstance(claims.get("name"), str) else None
        return VerifiedIdentity(str(claims["iss"]), str(claims["sub"]), email.lower(), name)


async def member_for(session: AsyncSession, identity: VerifiedIdentity, tenant: uuid.UUID | None) -> Principal:
    """The membership the verified e-mail signs into (joining `tenant` when it allows sign-up)."""
    connection = driver(session)
    rows = await connection.fetch(
        "SELECT * FROM papo_member_candidates($1, $2, $3)", identity.issuer, identity.subject, identity.email
    )
    if tenant is not None:
        rows = [row for row in rows if row["candidate_tenant_id"] == tenant]
    if len(rows) > 1:
        raise BadRequest("this account belongs to several workspaces; use the sign-in link of the one you want")
    if rows:
        row = rows[0]
        principal = Principal(row["candidate_tenant_id"], row["candidate_user_id"], row["candidate_role"])
        # from now on this provider account signs in by (issuer, subject), whatever its e-mail becomes
        await connection.execute(
            "SELECT papo_link_identity($1, $2, $3)", identity.issuer, identity.subject, principal.user_id
        )
    elif tenant is None:
        raise Forbidden("no workspace here knows this e-mail; ask an admin for an invitation")
    else:
        await connection.execute("SAVEPOINT join_verified")
        try:
            user_id = await connection.fetchval(
                "SELECT papo_join_verified($1, $2, $3, $4, $5, $6)",
                tenant,
                str(new_id()),
                identity.email,
                identity.name,
                identity.issuer,
                identity.subject,
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            await connection.execute("ROLLBACK TO SAVEPOINT join_verified")
            raise Forbidden("this workspace does not accept new accounts; ask an admin for an invitation") from exc
        principal = Principal(tenant, user_id, "member")
    await apply_context(session, principal.context())
    return principal
